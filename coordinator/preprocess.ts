/**
 * Preprocessing on the initiator. gcc preprocesses fully (plain -E) where that gives a local
 * build's object, or with `-fdirectives-only`, which expands includes and directives but leaves
 * the source text (comments, macro uses, token positions) for the real compile, so the remote
 * compiler's diagnostics and DWARF columns match a local build (facts.md part 3; see CppMode in
 * classify.ts). clang's equivalent is `-frewrite-includes`: includes inlined, the rest left.
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { LaunchReply } from '../proto/generated/ferry/launcher/v1/LaunchReply';
import type { PreprocessResult__Output } from '../proto/generated/ferry/launcher/v1/PreprocessResult';
import type { RemotePlan } from './classify';
import type { DriverTemplates } from './driver-template';
import type { ForkServers } from '../proto/fork-server';
import { removeIfPresent } from './object-writer';

export interface Preprocessed {
  exitCode: number;
  source: Buffer;
  stderr: Buffer;
  /** The compiler proper ran without its driver (a learnt command, see driver-template.ts). */
  direct: boolean;
  /** ... and a fork server ran it (fork-server.ts). */
  forked: boolean;
}

/** Where a driver's `-E` command can be replaced by the compiler proper's (gcc only). */
export interface DirectPreprocessing {
  templates: Pick<DriverTemplates, 'commandFor'>;
  /** The job's environment: the driver's choices depend on some of it. */
  env: NodeJS.ProcessEnv;
  /** Which build of the driver this is (LocalCompiler.fileVersion). */
  driverVersion: string;
  /** Started copies of the compiler proper that fork a process per job (fork-server.ts). */
  forkServers?: Pick<ForkServers, 'socketFor'>;
}

/** Flags the remote compile needs to read what the preprocessor wrote, as if it ran in `cwd`. */
export function remoteCompileArgs(plan: RemotePlan, cwd: string): string[] {
  if (plan.family === 'clang') {
    // clang records its own working directory as DW_AT_comp_dir; the worker's is a temporary one.
    const given = plan.compileArgs.some((a) => a.startsWith('-fdebug-compilation-dir') || a.startsWith('-ffile-compilation-dir'));
    return given ? plan.compileArgs : [...plan.compileArgs, `-fdebug-compilation-dir=${cwd}`];
  }
  // A .i made with -fdirectives-only must be compiled with it (facts.md part 3).
  return plan.preprocessed || plan.cppMode === 'full' ? plan.compileArgs : [...plan.compileArgs, '-fdirectives-only'];
}

export function preprocessArgs(plan: RemotePlan): string[] {
  if (plan.family === 'clang') return [...plan.cppArgs, '-E', '-frewrite-includes', plan.source];
  return plan.cppMode === 'full' ? [...plan.cppArgs, '-E', plan.source] : [...plan.cppArgs, '-E', '-fdirectives-only', plan.source];
}

/**
 * Builtins whose value is a source column (std::source_location, __builtin_COLUMN): a fully
 * preprocessed source moves columns, so such a job is preprocessed again with -fdirectives-only.
 */
export function usesColumnBuiltins(source: Buffer): boolean {
  return source.includes('__builtin_COLUMN') || source.includes('__builtin_source_location');
}

/** What a first, fully preprocessed run showed: anything the user would see sends the job round again. */
export interface FullRun {
  preprocessExit: number;
  preprocessStderr: number;
  columnBuiltins: boolean;
  /** Absent when the job did not reach a compiler. */
  compile?: { exitCode: number; stdout: number; stderr: number };
}

/**
 * Whether a job preprocessed in full must be done again with -fdirectives-only: the full mode's
 * messages are not a local build's (macro context, comments), nor are column values. A clean run
 * (no output, exit 0) is a local build's object as is.
 */
export function needsExactRun(run: FullRun): boolean {
  if (run.preprocessExit !== 0 || run.preprocessStderr > 0 || run.columnBuiltins) return true;
  return !!run.compile && (run.compile.exitCode !== 0 || run.compile.stdout > 0 || run.compile.stderr > 0);
}

/** Asks the launcher to run a preprocessor into a file; resolves with its exit status and stderr. */
export type AskLauncher = (reply: LaunchReply) => Promise<PreprocessResult__Output>;

/**
 * The preprocessed source of a job: read as it is when the input is already preprocessed (ccache
 * with run_second_cpp=false, a .i/.ii), else made by the launcher (see PREPROCESS in
 * launcher.proto) into `outputFile`, which is read and removed here.
 */
export async function preprocess(
  compilerPath: string,
  plan: RemotePlan,
  cwd: string,
  outputFile: string,
  ask: AskLauncher,
  direct?: DirectPreprocessing,
): Promise<Preprocessed> {
  if (plan.preprocessed) {
    return { exitCode: 0, source: await readFile(resolve(cwd, plan.source)), stderr: Buffer.alloc(0), direct: false, forked: false };
  }
  const argv = [compilerPath, ...preprocessArgs(plan)];
  try {
    const command = plan.family === 'gcc' && direct ? direct.templates.commandFor(argv, cwd, direct.env, direct.driverVersion) : undefined;
    if (command) {
      const forkServer = direct!.forkServers?.socketFor(command.argv[0], direct!.env) ?? '';
      const result = await ask({ action: 'PREPROCESS', preprocessArgv: command.argv, preprocessOutput: outputFile, env: command.env, forkServer });
      // One read of a file just written (in the page cache): synchronous is the cheaper way.
      if (result.exitCode === 0) {
        return { exitCode: 0, source: readFileSync(outputFile), stderr: Buffer.from(result.stderr), direct: true, forked: result.forkServer };
      }
      // A failing preprocessor is shown as the driver shows it (its messages, its exit status).
      removeIfPresent(outputFile);
    }
    const result = await ask({ action: 'PREPROCESS', preprocessArgv: argv, preprocessOutput: outputFile });
    const source = result.exitCode === 0 ? readFileSync(outputFile) : Buffer.alloc(0);
    return { exitCode: result.exitCode, source, stderr: Buffer.from(result.stderr), direct: false, forked: false };
  } finally {
    removeIfPresent(outputFile);
  }
}
