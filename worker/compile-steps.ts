/**
 * Compiling without gcc's driver. For a job, `gcc -c source.i -o x.o` runs cc1 into a temporary
 * .s and then as, one after the other; the driver itself (its start, spec processing, path
 * searches, the temporary file) is 7 % of a small job's CPU by perf's count of its own process, and
 * a job through it cost 77-84 ms here against 65-69 ms for cc1 and as run alone. For a job's
 * shape (compiler, arguments, the form of the output name) those two commands are fixed, with the
 * job directory and the output name passing through, so they are learnt once from `gcc -###` with
 * placeholders, checked against the driver's answer for a real job, and run directly for later
 * jobs: cc1 writes the assembly into the job directory, as assembles it. Anything else the driver
 * would run (objcopy for -gsplit-dwarf, a pipe for -pipe, collect2) keeps the driver.
 */
import { execFile } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { basename, isAbsolute, join } from 'node:path';
import { errorMessage } from '../proto/errors';
import { instantiate, LearntShapes, parseDriverCommands, runDriver, sameCommand, token, TOKEN_MARK, type DriverCommand, type RunDriver } from '../proto/driver-commands';
import { findOnPath } from './compilers';

/** The assembly cc1 writes for as, in the job directory (which goes with the job). */
export const ASSEMBLY_NAME = 'assembly.s';

/** Options whose effect on the driver's commands this does not model: the driver runs. */
const KEEP_DRIVER = /^(-v|-###|-Q|--verbose|-pipe|-pass-exit-codes|-save-temps.*|-wrapper.*|-B.*|-specs.*|--specs.*|-fcompare-debug.*|-dumpdir.*|-dumpbase.*|-print.*|--help.*|--target-help|--version|-time.*|-fplugin.*|-flto.*|-fuse-ld.*|@.*)$/;

/** Names put into commands as they are: nothing the driver would quote or escape differently. */
const PLAIN_NAME = /^[A-Za-z0-9._+-]+$/;

const COMPILER_PROPER = /^cc1(plus|obj|objplus)?$/;
const ASSEMBLER = /^([A-Za-z0-9_.-]+-)?as$/;

/** The driver's temporary assembly: make_temp_file's cc + 6 characters, in TMPDIR. */
const TEMP_ASSEMBLY = /^cc[A-Za-z0-9]{6}\.s$/;

/** A job as the worker runs it through the driver: `driver args… -o output <jobDir>/<input>` in `<jobDir>/out`. */
export interface DriverJob {
  /** The compiler's absolute path (the driver). */
  driver: string;
  /** The compiler's identity (its sha256): an upgraded compiler learns anew. */
  driverVersion: string;
  args: readonly string[];
  /** The -o argument, relative to `<jobDir>/out`. */
  output: string;
  /** The source's name inside the job directory (source.i). */
  input: string;
  /** The job's directory: `<root>/<name>`. */
  jobDir: string;
  /** The variables the driver gets, TMPDIR (the job directory) aside. */
  env: Readonly<Record<string, string>>;
}

/** A job's shape: its argv with the names replaced by placeholders, and the names. */
export interface CompileShape {
  /** The job directory's parent: placeholders stand for names inside it. */
  root: string;
  args: string[];
  output: string;
  /** Placeholder i stands for values[i]: the job directory's name, the output's stem, its directory. */
  values: string[];
}

/**
 * The placeholders of a job, or undefined when it has something this does not model: a name the
 * driver might quote or escape, an option that changes what the driver runs or where its outputs go.
 */
export function compileShape(job: DriverJob): CompileShape | undefined {
  if (job.args.some((a) => a.includes('\n') || a.includes(TOKEN_MARK) || KEEP_DRIVER.test(a))) return undefined;
  const slash = job.jobDir.lastIndexOf('/');
  const root = job.jobDir.slice(0, slash);
  const dirName = job.jobDir.slice(slash + 1);
  if (slash <= 0 || !PLAIN_NAME.test(dirName) || !PLAIN_NAME.test(job.input)) return undefined;
  const parts = job.output.split('/');
  const file = parts.pop()!;
  const dot = file.lastIndexOf('.');
  if (dot <= 0 || !parts.every((p) => PLAIN_NAME.test(p) && p !== '.' && p !== '..') || !PLAIN_NAME.test(file)) return undefined;
  const values = [dirName, file.slice(0, dot)];
  let output = `${token(1)}${file.slice(dot)}`;
  if (parts.length > 0) {
    values.push(parts.join('/'));
    output = `${token(2)}/${output}`;
  }
  return { root, args: [...job.args], output, values };
}

/** What runs instead of the driver: cc1 writing `<jobDir>/assembly.s`, then as reading it. */
export interface CompileSteps {
  compiler: DriverCommand;
  assembler: DriverCommand;
}

/**
 * The two commands of a `-###` compile run, the driver's temporary assembly replaced by the job
 * directory's: cc1 (absolute) with `-o <tmpdir>/ccXXXXXX.s`, then as with that file last and
 * nowhere else. Undefined for anything else.
 */
export function parseCompileCommands(stderr: string, tmpdir: string): CompileSteps | undefined {
  const commands = parseDriverCommands(stderr);
  if (!commands || commands.length !== 2) return undefined;
  const [compiler, assembler] = commands;
  if (!isAbsolute(compiler.argv[0]) || !COMPILER_PROPER.test(basename(compiler.argv[0])) || !ASSEMBLER.test(basename(assembler.argv[0]))) return undefined;
  const o = compiler.argv.lastIndexOf('-o');
  const temp = compiler.argv[o + 1];
  if (o < 0 || !temp || !temp.startsWith(`${tmpdir}/`) || !TEMP_ASSEMBLY.test(temp.slice(tmpdir.length + 1))) return undefined;
  if (assembler.argv[assembler.argv.length - 1] !== temp) return undefined;
  const mentions = [...compiler.argv, ...compiler.env, ...assembler.argv, ...assembler.env].filter((a) => a.includes(temp)).length;
  if (mentions !== 2) return undefined;
  const ours = join(tmpdir, ASSEMBLY_NAME);
  const swap = (c: DriverCommand): DriverCommand => ({ argv: c.argv.map((a) => (a === temp ? ours : a)), env: c.env });
  return { compiler: swap(compiler), assembler: swap(assembler) };
}

function fill(steps: CompileSteps, values: readonly string[]): CompileSteps {
  return { compiler: instantiate(steps.compiler, values), assembler: instantiate(steps.assembler, values) };
}

/** The assembler's absolute path: what the driver finds for `as` (its own directories first, then PATH). */
export type ResolveProgram = (driver: string, name: string, env: NodeJS.ProcessEnv) => Promise<string | undefined>;

export const resolveProgram: ResolveProgram = (driver, name, env) =>
  new Promise((resolve, reject) => {
    execFile(driver, [`-print-prog-name=${name}`], { env, timeout: 10_000 }, (err, stdout) => {
      if (err) return reject(err);
      const found = stdout.trim();
      resolve(isAbsolute(found) ? found : findOnPath(found, env.PATH ?? ''));
    });
  });

/**
 * Learnt compile commands, per shape (LearntShapes: from a shape's second job on, in the
 * background; jobs use the driver until it is ready).
 */
export class CompileTemplates {
  private readonly shapes: LearntShapes<CompileSteps>;
  learnt = 0;
  refused = 0;

  constructor(
    private readonly log: (line: string) => void = () => undefined,
    private readonly run: RunDriver = runDriver,
    private readonly resolve: ResolveProgram = resolveProgram,
    capacity = 1024,
  ) {
    this.shapes = new LearntShapes(capacity);
  }

  /** The commands to run instead of the driver for this job, or undefined to run the driver. */
  stepsFor(job: DriverJob): CompileSteps | undefined {
    const shape = compileShape(job);
    if (!shape) return undefined;
    const env = Object.keys(job.env)
      .sort()
      .map((k) => `${k}=${job.env[k]}`);
    const key = JSON.stringify([job.driver, job.driverVersion, shape.root, job.input, env, shape.args, shape.output]);
    const steps = this.shapes.lookup(key, () => this.learn(shape, job));
    return steps && fill(steps, shape.values);
  }

  /** Resolves when every shape being learnt now is learnt (or refused). */
  whenLearnt(): Promise<void> {
    return this.shapes.whenLearnt();
  }

  private async learn(shape: CompileShape, job: DriverJob): Promise<CompileSteps | null> {
    const what = `${basename(job.driver)} ${shape.args.join(' ')}`.slice(0, 120);
    try {
      // The placeholder run needs its directories: the driver picks its temporary directory only
      // among those that exist, and runs where it is told.
      const tokenDir = join(shape.root, token(0));
      mkdirSync(join(tokenDir, 'out'), { recursive: true });
      const argvOf = (output: string, dir: string) => [job.driver, ...shape.args, '-o', output, join(dir, job.input)];
      const envOf = (dir: string) => ({ ...job.env, TMPDIR: dir });
      const [withTokens, real] = await Promise.all([
        this.run(argvOf(shape.output, tokenDir), join(tokenDir, 'out'), envOf(tokenDir)),
        this.run(argvOf(job.output, job.jobDir), join(job.jobDir, 'out'), envOf(job.jobDir)),
      ]);
      const template = parseCompileCommands(withTokens, tokenDir);
      const expected = parseCompileCommands(real, job.jobDir);
      if (!template || !expected) return this.refuse(`compiles of "${what}" keep gcc's driver: its -### output is not one cc1 and one as command`);
      const filled = fill(template, shape.values);
      if (!sameCommand(filled.compiler, expected.compiler) || !sameCommand(filled.assembler, expected.assembler)) {
        return this.refuse(`compiles of "${what}" keep gcc's driver: its commands name the job's files where the placeholders do not account for them`);
      }
      // The driver names the assembler as it will look it up ("as"): the worker runs a path.
      const printed = template.assembler.argv[0];
      const assembler = isAbsolute(printed) ? printed : await this.resolve(job.driver, printed, envOf(job.jobDir));
      if (!assembler) return this.refuse(`compiles of "${what}" keep gcc's driver: it finds no ${printed} here`);
      this.learnt++;
      this.log(`compiles of "${what}" run cc1 and as without gcc's driver from now on`);
      return { compiler: template.compiler, assembler: { argv: [assembler, ...template.assembler.argv.slice(1)], env: template.assembler.env } };
    } catch (err) {
      return this.refuse(`compiles of "${what}" keep gcc's driver: ${errorMessage(err).split('\n')[0]}`);
    }
  }

  private refuse(line: string): null {
    this.refused++;
    this.log(line);
    return null;
  }
}
