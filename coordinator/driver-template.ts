/**
 * Preprocessing without gcc's driver. Of the ~7 ms a small `gcc -E` costs, ~2.5 ms are the driver
 * itself (spec processing, path searches, one more fork and exec) before it runs `cc1 -E`. For a
 * given argv the driver's command is fixed, and the job's file names only pass through it (or
 * their base names do), so the command is learnt once per argv shape from `gcc -###` with
 * placeholder names, checked against the driver's answer for real names, and filled in for later
 * jobs of that shape. Anything the learning does not recognise keeps the driver.
 */
import { basename, extname } from 'node:path';
import { instantiate, LearntShapes, parseDriverCommands, runDriver, sameCommand, token, TOKEN_MARK, type DriverCommand, type RunDriver } from '../proto/driver-commands';

/** Options whose effect on the driver's command this does not model: the driver runs. */
const KEEP_DRIVER = /^(-v|-###|-Q|--verbose|-no-integrated-cpp|-traditional-cpp|-save-temps.*|-wrapper.*|-B.*|-specs.*|--specs.*|-fcompare-debug.*|-dumpdir.*|-dumpbase.*|-print.*|--help.*|--target-help|--version|-time.*|-fplugin.*|@.*)$/;

/** Dependency options whose value is a per-job file name or make target. */
const DEP_VALUE = new Set(['-MF', '-MT', '-MQ']);

/** Environment the driver reads (or hands to cc1): part of the shape. */
const DRIVER_ENV = /^(GCC_[A-Z_]*|COLLECT_[A-Z_]*|COMPILER_PATH|LIBRARY_PATH|DEPENDENCIES_OUTPUT|SUNPRO_DEPENDENCIES|PATH|TMPDIR|LANG|LANGUAGE|LC_[A-Z]+)$/;

/** A job's argv with its file names replaced by placeholders, and the names themselves. */
export interface JobShape {
  /** The driver argv with placeholders (compiler first). */
  tokenArgv: string[];
  /** Placeholder i stands for values[i]. */
  values: string[];
}

/**
 * Replaces the per-job names in a preprocessing argv ([driver, ...args, source], the source last)
 * with placeholders: the source's directory and stem (the driver derives `-dumpbase` and implied
 * .d names from the base name) and the values of -MF/-MT/-MQ, separate, joined or inside -Wp,.
 * Undefined when the argv has something this does not model.
 */
export function shapeOf(argv: readonly string[]): JobShape | undefined {
  if (argv.length < 2) return undefined;
  const values: string[] = [];
  const placeholder = (value: string): string => {
    values.push(value);
    return token(values.length - 1);
  };
  if (argv.some((a) => a.includes('\n') || a.includes(TOKEN_MARK))) return undefined;
  const source = argv[argv.length - 1];
  const args = argv.slice(1, -1);
  const tokenArgs: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    // Words without a dash are option values (-include h.h): classify() lets one input through, last.
    if (KEEP_DRIVER.test(arg)) return undefined;
    if (DEP_VALUE.has(arg)) {
      if (i + 1 >= args.length) return undefined;
      tokenArgs.push(arg, placeholder(args[++i]));
    } else if (DEP_VALUE.has(arg.slice(0, 3))) {
      tokenArgs.push(arg.slice(0, 3) + placeholder(arg.slice(3)));
    } else if (arg.startsWith('-Wp,')) {
      const parts = arg.slice(4).split(',');
      if (parts.length === 2 && /^-M(M?D|F|T|Q)$/.test(parts[0])) tokenArgs.push(`-Wp,${parts[0]},${placeholder(parts[1])}`);
      else if (parts.every((p) => !/^-M/.test(p))) tokenArgs.push(arg);
      else return undefined;
    } else {
      tokenArgs.push(arg);
    }
  }

  const name = basename(source);
  const ext = extname(name);
  const stem = name.slice(0, name.length - ext.length);
  if (!ext || !stem || source.startsWith('-')) return undefined;
  const slash = source.lastIndexOf('/');
  let sourceToken: string;
  if (slash < 0) {
    sourceToken = placeholder(stem) + ext;
  } else if (slash === 0) {
    sourceToken = '/' + placeholder(stem) + ext;
  } else {
    // An absolute directory stays absolute: the placeholder stands for it without its first slash.
    const dir = source.slice(0, slash);
    const dirToken = dir.startsWith('/') ? '/' + placeholder(dir.slice(1)) : placeholder(dir);
    sourceToken = `${dirToken}/${placeholder(stem)}${ext}`;
  }
  return { tokenArgv: [argv[0], ...tokenArgs, sourceToken], values };
}

const COMPILER_PROPER = /^cc1(plus|obj|objplus)?$/;

/**
 * The single compiler-proper command of a `gcc -### -E …` run, with the variables set before it.
 * Undefined for anything else: several commands, another program, or a line the driver prints for
 * a reason this does not know (a warning, an error).
 */
export function parseDriverOutput(stderr: string): DriverCommand | undefined {
  const commands = parseDriverCommands(stderr);
  if (!commands || commands.length !== 1) return undefined;
  const [command] = commands;
  if (!command.argv[0].startsWith('/') || !COMPILER_PROPER.test(basename(command.argv[0]))) return undefined;
  // The launcher sets at most MAX_REPLY_ENV (16) variables.
  return command.env.length <= 16 ? command : undefined;
}

/**
 * Learnt driver commands, per shape (LearntShapes: from a shape's second job on, in the
 * background; jobs use the driver until it is ready).
 */
export class DriverTemplates {
  private readonly shapes: LearntShapes<DriverCommand>;
  learnt = 0;
  refused = 0;

  constructor(
    private readonly run: RunDriver = runDriver,
    private readonly log: (line: string) => void = () => undefined,
    capacity = 1024,
  ) {
    this.shapes = new LearntShapes(capacity);
  }

  /**
   * The command to run instead of `argv` (the driver's `-E` command line), or undefined to run the
   * driver. `cwd` and `env` are the job's: the driver resolves paths and reads variables from them.
   * `driverVersion` tells builds of the driver apart (LocalCompiler.fileVersion): an upgrade learns anew.
   */
  commandFor(argv: readonly string[], cwd: string, env: NodeJS.ProcessEnv, driverVersion: string): DriverCommand | undefined {
    const shape = shapeOf(argv);
    if (!shape) return undefined;
    const driverEnv = Object.keys(env)
      .filter((k) => DRIVER_ENV.test(k))
      .sort()
      .map((k) => `${k}=${env[k]}`);
    const key = JSON.stringify([driverVersion, cwd, driverEnv, shape.tokenArgv]);
    const template = this.shapes.lookup(key, () => this.learn(shape, argv, cwd, env));
    return template && instantiate(template, shape.values);
  }

  /** Resolves when every shape being learnt now is learnt (or refused). */
  whenLearnt(): Promise<void> {
    return this.shapes.whenLearnt();
  }

  private async learn(shape: JobShape, argv: readonly string[], cwd: string, env: NodeJS.ProcessEnv): Promise<DriverCommand | null> {
    try {
      const [withTokens, real] = await Promise.all([this.run(shape.tokenArgv, cwd, env), this.run(argv, cwd, env)]);
      const template = parseDriverOutput(withTokens);
      const expected = parseDriverOutput(real);
      if (template && expected && sameCommand(instantiate(template, shape.values), expected)) {
        this.learnt++;
        return template;
      }
      this.refused++;
      this.log(`preprocessing of ${basename(argv[argv.length - 1])}'s shape keeps gcc's driver: its -### output is not one cc1 command that names the job's files only where expected`);
      return null;
    } catch (err) {
      this.refused++;
      this.log(`preprocessing keeps gcc's driver for ${basename(argv[argv.length - 1])}'s shape: ${(err as Error).message.split('\n')[0]}`);
      return null;
    }
  }
}
