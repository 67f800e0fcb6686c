/**
 * One job of a Jobs stream: receive the job header and the preprocessed source, wait for a slot,
 * run the allowed compiler in a private directory, stream the outputs back, hand the directory on
 * emptied.
 */
import { closeSync, constants as fsConstants, mkdirSync, openSync, readFileSync, readSync, statSync, writeFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { FerryError, errorMessage } from '../proto/errors';
import { decodeChunk, splitIntoChunks } from '../proto/chunks';
import type { CompileRequest__Output } from '../proto/generated/ferry/v1/CompileRequest';
import type { SourceFile__Output } from '../proto/generated/ferry/v1/SourceFile';
import type { JobHeader__Output } from '../proto/generated/ferry/v1/JobHeader';
import type { Language__Output } from '../proto/generated/ferry/v1/Language';
import { checkJobArgs, type ArgPolicy } from './arg-policy';
import { diagnosticFiles, hasLocatedDiagnostics, lineMarkerPaths, mirrorPath, rewriteLineMarkers } from './excerpts';
import type { CompilerTable } from './compilers';
import type { DriverCommand } from '../proto/driver-commands';
import type { ForkServers } from '../proto/fork-server';
import { ASSEMBLY_NAME, type CompileSteps, type CompileTemplates } from './compile-steps';
import { ExecError, type ExecHelper } from './exec-helper';
import { JobRefused } from './job-refused';
import type { JobDirs } from './job-dirs';
import type { JobCall } from './job-stream';
import { Slots } from './slots';

export interface WorkerLimits {
  /** Uncompressed preprocessed source, bytes (max_source_mb). */
  maxSourceBytes: number;
  /** The source's chunks as sent, bytes (max_compressed_source_mb). */
  maxCompressedSourceBytes: number;
  /** Each output file, bytes (max_object_mb). */
  maxOutputBytes: number;
  /** Compiler stdout and stderr each, bytes; the rest is cut with a note. */
  maxMessageBytes: number;
  /** A source taking longer to arrive, or a compiler running longer, ends the job (job_timeout). */
  jobTimeoutMs: number;
  /** Jobs one client connection may have past the door at once (max_jobs_per_connection). */
  maxJobsPerConnection: number;
}

export const DEFAULT_LIMITS: WorkerLimits = {
  maxSourceBytes: 256 << 20,
  maxCompressedSourceBytes: 256 << 20,
  maxOutputBytes: 512 << 20,
  maxMessageBytes: 16 << 20,
  jobTimeoutMs: 30 * 60_000,
  maxJobsPerConnection: 64,
};

/** "1 MiB", "0.5 MiB": limits are configured in MiB. */
function mib(bytes: number): string {
  return `${+(bytes / (1 << 20)).toFixed(2)} MiB`;
}

/** What to do about a limit: the key that raises it. */
function raiseHint(key: string, flag: string): string {
  return `Raise ${key} in the worker's worker.conf (or ferry-worker --${flag}), or compile this file locally.`;
}

/** A client's string, cut for a message and the log: a refusal names it, it need not carry all of it. */
function shorten(text: string): string {
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

/** Outputs a job may name: an object, a .dwo, an assembly file; a few more cost nothing. */
const MAX_OUTPUTS = 16;

/** Environment variables a client may set for the compiler: they change messages, not code. */
const PASSED_ENV = /^(LANG|LANGUAGE|LC_[A-Z]+|GCC_COLORS|GCC_URLS|TERM_URLS)$/;

export interface WorkerCounters {
  jobsDone: number;
}

export interface CompileDeps {
  compilers: CompilerTable;
  slots: Slots;
  /** Where jobs run: one private directory each, reused once emptied. */
  jobDirs: JobDirs;
  limits: WorkerLimits;
  counters: WorkerCounters;
  argPolicy: ArgPolicy;
  /** Starts the compilers. */
  exec: ExecHelper;
  /** cc1 and as run without gcc's driver, for job shapes it has learnt; absent: always the driver. */
  compileSteps?: CompileTemplates;
  /** Started copies of cc1 and as that those steps are forked from; absent: they are exec'd. */
  forkServers?: ForkServers;
  log: (line: string) => void;
}

type Call = JobCall;

const SOURCE_EXTENSION: Record<Language__Output, string> = {
  LANGUAGE_UNSPECIFIED: '',
  C: 'i',
  CXX: 'ii',
  OBJC: 'mi',
  OBJCXX: 'mii',
};

function isDiskFull(err: unknown): boolean {
  const code = err instanceof ExecError ? err.errno : (err as NodeJS.ErrnoException).code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/** A full disk is the host's trouble, not the job's: UNAVAILABLE sends the job to another host. */
function diskError(err: unknown): never {
  if (isDiskFull(err)) {
    throw new JobRefused(grpc.status.UNAVAILABLE, 'disk-full', `the worker's disk is full (${(err as Error).message})`, 'Free space in the worker\'s tmpdir.');
  }
  throw err;
}

/** A relative path with no `.`/`..`/empty segments: it stays inside the directory it is joined to. */
export function isJobRelativePath(path: string): boolean {
  if (!path || path.startsWith('/') || !fitsFileSystem(path)) return false;
  return path.split('/').every((segment) => segment !== '' && segment !== '.' && segment !== '..');
}

/**
 * A name the file system takes once placed inside a job directory: no NUL, no segment over
 * NAME_MAX, and room left under PATH_MAX for the job directory's own path.
 */
export function fitsFileSystem(path: string): boolean {
  return !path.includes('\0') && Buffer.byteLength(path) <= 3072 && path.split('/').every((segment) => Buffer.byteLength(segment) <= 255);
}

/** The client's working directory: empty, or absolute without `.`/`..` (it is mirrored inside the job directory). */
export function isMirrorableCwd(cwd: string): boolean {
  if (!cwd) return true;
  if (!cwd.startsWith('/') || !fitsFileSystem(cwd)) return false;
  return cwd.split('/').every((segment) => segment !== '.' && segment !== '..');
}

function validateHeader(header: JobHeader__Output, deps: CompileDeps) {
  const compiler = deps.compilers.byName.get(header.compiler);
  if (!compiler) {
    throw new JobRefused(
      grpc.status.NOT_FOUND,
      'unknown-compiler',
      `compiler "${shorten(header.compiler)}" is not on this worker's allow list`,
      `Allowed here: ${[...deps.compilers.byName.keys()].join(', ') || 'none'}.`,
    );
  }
  if (header.compilerVersion && header.compilerVersion !== compiler.version) {
    throw new JobRefused(
      grpc.status.FAILED_PRECONDITION,
      'compiler-mismatch',
      `compiler "${header.compiler}" here is "${compiler.version}", the job expects "${shorten(header.compilerVersion)}"`,
      'Install the same compiler version on the worker, or remove this host for that compiler.',
    );
  }
  if (!SOURCE_EXTENSION[header.language]) {
    throw new JobRefused(grpc.status.INVALID_ARGUMENT, 'bad-request', 'job header has no language');
  }
  if (header.outputs.length === 0) throw new JobRefused(grpc.status.INVALID_ARGUMENT, 'bad-request', 'job header names no outputs');
  if (header.outputs.length > MAX_OUTPUTS) {
    throw new JobRefused(grpc.status.INVALID_ARGUMENT, 'bad-request', `job header names ${header.outputs.length} outputs, more than ${MAX_OUTPUTS}`);
  }
  for (const output of header.outputs) {
    if (!isJobRelativePath(output.name)) {
      throw new JobRefused(grpc.status.INVALID_ARGUMENT, 'bad-request', `output name "${shorten(output.name)}" must be a relative path inside the job directory`);
    }
  }
  if (!isMirrorableCwd(header.cwd)) {
    throw new JobRefused(grpc.status.INVALID_ARGUMENT, 'bad-request', `working directory "${shorten(header.cwd)}" must be an absolute path without "." or "..", NUL or overlong names`);
  }
  if (header.sourcePath && !fitsFileSystem(header.sourcePath)) {
    throw new JobRefused(grpc.status.INVALID_ARGUMENT, 'bad-request', `source path "${shorten(header.sourcePath)}" has a NUL byte or an overlong name`);
  }
  for (const [name, value] of Object.entries(header.env ?? {})) {
    if (value.includes('\0') || name.includes('\0')) {
      throw new JobRefused(grpc.status.INVALID_ARGUMENT, 'bad-request', `environment variable ${JSON.stringify(name)} contains a NUL byte`);
    }
  }
  if (header.sourceSize > deps.limits.maxSourceBytes) {
    throw new JobRefused(
      grpc.status.RESOURCE_EXHAUSTED,
      'too-large',
      `source of ${header.sourceSize} bytes is over this worker's limit of ${mib(deps.limits.maxSourceBytes)} (max_source_mb)`,
      raiseHint('max_source_mb', 'max-source-mb'),
    );
  }
  try {
    checkJobArgs(header.args, deps.argPolicy);
  } catch (err) {
    const e = err as FerryError;
    throw new JobRefused(grpc.status.INVALID_ARGUMENT, e.code, e.message, e.hint);
  }
  return compiler;
}

/** Limits on the files a client sends for source excerpts. */
const MAX_EXCERPT_FILES = 64;
const EXCERPT_FILES_TIMEOUT_MS = 30_000;

/** Waits for the client's SourceFiles, after the source: resolves undefined on timeout, end or cancellation. */
function awaitSourceFiles(call: Call, timeoutMs: number, signal: AbortSignal): Promise<SourceFile__Output[] | undefined> {
  return new Promise((resolve) => {
    const done = (files: SourceFile__Output[] | undefined) => {
      clearTimeout(timer);
      call.off('data', onData);
      call.off('end', onEnd);
      signal.removeEventListener('abort', onEnd);
      resolve(files);
    };
    const onData = (message: CompileRequest__Output) => done(message.part === 'files' ? (message.files?.files ?? []) : undefined);
    const onEnd = () => done(undefined);
    const timer = setTimeout(() => done(undefined), timeoutMs);
    call.on('data', onData);
    call.once('end', onEnd);
    signal.addEventListener('abort', onEnd, { once: true });
  });
}

/** Reads the request stream up to its SourceEnd, within the job timeout; `signal` (a cancelled call) abandons it. */
function receiveJob(call: Call, deps: CompileDeps, signal: AbortSignal): Promise<{ header: JobHeader__Output; source: Buffer }> {
  return new Promise((resolve, reject) => {
    let header: JobHeader__Output | undefined;
    const parts: Buffer[] = [];
    let size = 0;
    let sent = 0;
    let settled = false;
    const finish = (err?: unknown) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      call.off('data', onData);
      call.off('end', onEnd);
      if (err) reject(err);
      else resolve({ header: header!, source: Buffer.concat(parts, size) });
    };
    // A client that stops sending must not hold its connection's turn (and its memory) forever.
    const timer = setTimeout(
      () =>
        finish(
          new JobRefused(
            grpc.status.DEADLINE_EXCEEDED,
            'receive-timeout',
            `the job's source did not arrive within ${deps.limits.jobTimeoutMs / 1000} s (job_timeout)`,
            raiseHint('job_timeout', 'job-timeout'),
          ),
        ),
      deps.limits.jobTimeoutMs,
    );
    const onAbort = () => finish(signal.reason);
    const onEnd = () => finish(new JobRefused(grpc.status.DATA_LOSS, 'truncated', 'request stream ended before the source was complete'));
    const onData = (message: CompileRequest__Output) => {
      try {
        if (message.part === 'header' && message.header && !header) {
          header = message.header;
          validateHeader(header, deps);
        } else if (message.part === 'source' && message.source && header) {
          sent += message.source.data.length;
          if (sent > deps.limits.maxCompressedSourceBytes) {
            throw new JobRefused(
              grpc.status.RESOURCE_EXHAUSTED,
              'too-large',
              `source as sent passed this worker's limit of ${mib(deps.limits.maxCompressedSourceBytes)} (max_compressed_source_mb) at ${sent} bytes`,
              raiseHint('max_compressed_source_mb', 'max-compressed-source-mb'),
            );
          }
          const raw = decodeChunk(message.source, header.sourceSize - size);
          size += raw.length;
          parts.push(raw);
        } else if (message.part === 'end' && message.end && header) {
          if (message.end.totalSize !== size || header.sourceSize !== size) {
            throw new JobRefused(
              grpc.status.DATA_LOSS,
              'truncated',
              `source stream ended at ${size} bytes, header said ${header.sourceSize}, end said ${message.end.totalSize}`,
            );
          }
          finish();
        } else {
          throw new JobRefused(
            grpc.status.INVALID_ARGUMENT,
            'bad-request',
            header ? `unexpected "${message.part ?? 'empty'}" message in a job` : 'the first message of a job must be its header',
          );
        }
      } catch (err) {
        if (err instanceof JobRefused) finish(err);
        else if (err instanceof FerryError) finish(new JobRefused(grpc.status.INVALID_ARGUMENT, err.code, err.message, err.hint));
        else finish(err);
      }
    };
    call.on('data', onData);
    call.once('end', onEnd);
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
}

interface CompilerRun {
  exitCode: number;
  signal: string;
  stdout: Buffer;
  stderr: Buffer;
  /** cc1 and as ran at once, through a named pipe (runSteps). */
  piped?: boolean;
  /** Forked from a started copy of the program (a fork server), not exec'd; runSteps: both steps. */
  forked?: boolean;
}

/**
 * A compiler's captured stdout or stderr: at most `limit` bytes are read (a huge one is never loaded),
 * and a cut one ends with a note saying so.
 */
export function readCapped(path: string, limit: number): Buffer {
  // Most are empty (a clean compile): one stat, no open. Synchronous: two small files in the job's
  // own directory cost a few syscalls, less than the promise machinery around them.
  const size = statSync(path).size;
  if (size === 0) return Buffer.alloc(0);
  const fd = openSync(path, 'r');
  try {
    const data = Buffer.alloc(Math.min(size, limit));
    let got = 0;
    while (got < data.length) {
      const bytesRead = readSync(fd, data, got, data.length - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    const read = data.subarray(0, got);
    return size > limit ? Buffer.concat([read, Buffer.from(`\nferry-worker: output cut at ${limit} bytes\n`)]) : read;
  } finally {
    closeSync(fd);
  }
}

/**
 * Runs the compiler in its own process group (the driver's children, cc1 and as, die with it instead
 * of running on with the job directory), its stdout and stderr captured in `<jobDir>/<name>.stdout`
 * and `.stderr`.
 */
async function runCompiler(
  path: string,
  args: string[],
  cwd: string,
  env: NodeJS.ProcessEnv,
  capture: { jobDir: string; name: string; forkServer?: string },
  deps: CompileDeps,
  signal: AbortSignal,
  timeoutMs = deps.limits.jobTimeoutMs,
): Promise<CompilerRun> {
  const stdoutPath = join(capture.jobDir, `${capture.name}.stdout`);
  const stderrPath = join(capture.jobDir, `${capture.name}.stderr`);
  let run;
  try {
    run = await deps.exec.run(path, args, { cwd, env, stdoutPath, stderrPath, signal, timeoutMs, forkServer: capture.forkServer });
  } catch (err) {
    if (!(err instanceof ExecError)) throw err;
    // The job directory's disk is full: not the compiler's fault.
    if (isDiskFull(err)) diskError(err);
    // The compiler went away since the worker started (uninstalled, upgraded): the host cannot
    // take this job, another host can.
    throw new JobRefused(grpc.status.UNAVAILABLE, 'compiler-failed-to-start', `cannot run ${path}: ${err.message}`, 'Reinstall the compiler or restart ferry-worker.');
  }
  if (run.timedOut) {
    throw new JobRefused(
      grpc.status.DEADLINE_EXCEEDED,
      'job-timeout',
      `compiler ran longer than ${deps.limits.jobTimeoutMs / 1000} s and was killed (job_timeout)`,
      raiseHint('job_timeout', 'job-timeout'),
    );
  }
  const stdout = readCapped(stdoutPath, deps.limits.maxMessageBytes);
  const stderr = readCapped(stderrPath, deps.limits.maxMessageBytes);
  return { exitCode: run.status, signal: run.signal ?? '', stdout, stderr, forked: run.forked };
}

/** The compiler's variables, TMPDIR aside. */
function jobEnv(header: JobHeader__Output): Record<string, string> {
  const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
  for (const [name, value] of Object.entries(header.env ?? {})) {
    if (PASSED_ENV.test(name)) env[name] = value;
  }
  return env;
}

function compilerEnv(header: JobHeader__Output, jobDir: string): NodeJS.ProcessEnv {
  // The compiler's temporary files (the assembler's input) land in the job directory and go with it.
  return { ...jobEnv(header), TMPDIR: jobDir };
}

/**
 * Runs cc1 and as as the driver would have (compile-steps.ts). Undefined when a step ended in a
 * way the driver reports in words of its own (a signal, an internal compiler error's status): the
 * job is then compiled again through the driver. A step's failure (status 1) ends the job as the
 * driver ends it: status 1, the messages so far.
 *
 * `<jobDir>/assembly.s` is made a named pipe when the exec helper can make one: as then starts with
 * cc1 and assembles each function as cc1 writes it, instead of starting after it (on a free core,
 * its start-up and most of its work leave the job's latency). Both commands and the file name stay
 * as learnt, so the object is the same as through a regular file.
 */
async function runSteps(steps: CompileSteps, cwd: string, env: NodeJS.ProcessEnv, jobDir: string, deps: CompileDeps, signal: AbortSignal): Promise<CompilerRun | undefined> {
  const stepEnv = (lines: string[]) => ({ ...env, ...Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)])) });
  const viaDriver = (step: string, run: CompilerRun) => {
    deps.log(`${step} ${run.signal ? `was killed by ${run.signal}` : `exited with status ${run.exitCode}`}: compiling the job again through gcc's driver, for its own message`);
    return undefined;
  };
  const step = (command: DriverCommand, name: string, stepSignal: AbortSignal, timeoutMs?: number) => {
    const stepEnvironment = stepEnv(command.env);
    const forkServer = deps.forkServers?.socketFor(command.argv[0], stepEnvironment);
    return runCompiler(command.argv[0], command.argv.slice(1), cwd, stepEnvironment, { jobDir, name, forkServer }, deps, stepSignal, timeoutMs);
  };
  const runCc1 = () => step(steps.compiler, 'cc1', signal);
  const runAs = (asSignal: AbortSignal, timeoutMs?: number) => step(steps.assembler, 'as', asSignal, timeoutMs);
  const joined = (cc1: CompilerRun, as: CompilerRun, piped: boolean): CompilerRun | undefined => {
    if (as.signal || as.exitCode > 1) return viaDriver(basename(steps.assembler.argv[0]), as);
    return { exitCode: as.exitCode, signal: '', stdout: Buffer.concat([cc1.stdout, as.stdout]), stderr: Buffer.concat([cc1.stderr, as.stderr]), piped, forked: cc1.forked && as.forked };
  };

  const fifo = join(jobDir, ASSEMBLY_NAME);
  const piped = await makeFifo(fifo, deps);
  // Piped, as starts now and goes when the job goes, or when cc1 fails (the driver would not have run it).
  const asAborter = new AbortController();
  const abortAs = () => asAborter.abort(signal.reason);
  signal.addEventListener('abort', abortAs, { once: true });
  const asRun = piped ? runAs(asAborter.signal) : undefined;
  // Handled below, whatever cc1 does first; without this a failed start of as would be an unhandled rejection meanwhile.
  asRun?.catch(() => undefined);
  const stopAs = async () => {
    asAborter.abort();
    await asRun?.catch(() => undefined);
  };
  try {
    const started = Date.now();
    let cc1: CompilerRun;
    try {
      cc1 = await runCc1();
    } finally {
      // cc1 always opens its output, but if it ended before, as would wait in open(2) for a writer.
      if (piped) releaseFifoReader(fifo, deps);
    }
    // A cancelled job ends here, whatever the kill made of the step.
    if (signal.aborted) {
      await stopAs();
      return cc1;
    }
    if (cc1.signal || cc1.exitCode !== 0) {
      await stopAs();
      if (cc1.signal || cc1.exitCode > 1) return viaDriver(basename(steps.compiler.argv[0]), cc1);
      return { ...cc1, piped };
    }
    const as = await (asRun ?? runAs(signal, Math.max(1, deps.limits.jobTimeoutMs - (Date.now() - started))));
    if (signal.aborted) return as;
    return joined(cc1, as, piped);
  } catch (err) {
    await stopAs();
    throw err;
  } finally {
    signal.removeEventListener('abort', abortAs);
  }
}

/** Makes `path` a named pipe; false (cc1 then writes a regular file) when the exec helper cannot. */
async function makeFifo(path: string, deps: CompileDeps): Promise<boolean> {
  try {
    await deps.exec.makeFifo(path);
    return true;
  } catch (err) {
    // ENOSYS: no helper, which the worker logged when it started.
    if (!(err instanceof ExecError) || err.errno !== 'ENOSYS') deps.log(`cannot make ${path} a named pipe (${errorMessage(err)}): cc1 and as run one after the other`);
    return false;
  }
}

/** Opens and closes the pipe's writing end, which lets a reader still in open(2) see the end. */
function releaseFifoReader(path: string, deps: CompileDeps): void {
  let fd;
  try {
    fd = openSync(path, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK);
  } catch (err) {
    // ENXIO: no reader any more, as is done. ENOENT: the job directory is being emptied.
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENXIO' && code !== 'ENOENT') deps.log(`cannot open ${path} to end as's input: ${errorMessage(err)}`);
    return;
  }
  closeSync(fd);
}

/** Where the compiler runs, what it is told to compile, and what it needs for that. */
interface PlacedSource {
  cwd: string;
  input: string;
  /** The -o argument (relative to cwd or absolute). */
  output: string;
  extraArgs: string[];
}

/**
 * Writes the job's source. Preprocessed output (gcc) names its files in its line markers, so any
 * name does; a complete source (clang) goes under its own name in a mirror of the client's working
 * directory, because clang names the compile unit after the file it reads.
 */
async function placeSource(jobDir: string, header: JobHeader__Output, source: Buffer): Promise<PlacedSource> {
  const outDir = join(jobDir, 'out');
  // Synchronous, like every per-job file operation here: a few syscalls in the job's own
  // directory cost less than the promise and thread-pool round trips around them.
  for (const output of header.outputs) mkdirSync(dirname(join(outDir, output.name)), { recursive: true });
  if (!header.sourcePath) {
    // gcc runs where the outputs go, named as the client names them (a .dwo's name is derived from -o).
    const input = join(jobDir, `source.${SOURCE_EXTENSION[header.language]}`);
    writeFileSync(input, source, { mode: 0o600 });
    return { cwd: outDir, input, output: header.outputs[0].name, extraArgs: [] };
  }
  const root = join(jobDir, 'root');
  const cwd = header.cwd || '/';
  const target = mirrorPath(root, cwd, header.sourcePath);
  if (!target) {
    throw new JobRefused(grpc.status.INVALID_ARGUMENT, 'bad-request', `source path "${shorten(header.sourcePath)}" leaves the job directory`);
  }
  await mkdir(dirname(target), { recursive: true });
  await writeFile(target, source, { mode: 0o600 });
  const workDir = join(root, cwd);
  await mkdir(workDir, { recursive: true });
  // An absolute name is compiled from inside the mirror; its debug names are mapped back.
  const output = join(outDir, header.outputs[0].name);
  return isAbsolute(header.sourcePath)
    ? { cwd: workDir, input: target, output, extraArgs: [`-fdebug-prefix-map=${root}=`] }
    : { cwd: workDir, input: header.sourcePath, output, extraArgs: [] };
}

/** Streams the outputs of a successful compile; returns their sizes. */
async function sendOutputs(call: Call, header: JobHeader__Output, jobDir: string, run: CompilerRun, deps: CompileDeps): Promise<number[]> {
  const sizes: number[] = [];
  for (let index = 0; index < header.outputs.length; index++) {
    if (run.exitCode !== 0) {
      sizes.push(0);
      continue;
    }
    const path = join(jobDir, 'out', header.outputs[index].name);
    const info = statSync(path, { throwIfNoEntry: false });
    if (!info) {
      sizes.push(0);
      continue;
    }
    const size = info.size;
    // Checked before reading: an oversized object is never loaded into memory.
    if (size > deps.limits.maxOutputBytes) {
      throw new JobRefused(
        grpc.status.RESOURCE_EXHAUSTED,
        'too-large',
        `output ${header.outputs[index].name} is ${size} bytes, over this worker's limit of ${mib(deps.limits.maxOutputBytes)} (max_object_mb)`,
        raiseHint('max_object_mb', 'max-object-mb'),
      );
    }
    const data = readFileSync(path);
    sizes.push(data.length);
    for (const chunk of splitIntoChunks(data)) call.write({ output: { output: index, chunk } });
  }
  return sizes;
}

/**
 * Compiles again with the files the diagnostics name placed in a mirror of their paths, so gcc can
 * print their source lines. Returns the diagnostics of that run, or undefined to keep the first.
 */
async function diagnosticsWithExcerpts(
  call: Call,
  header: JobHeader__Output,
  source: Buffer,
  jobDir: string,
  first: CompilerRun,
  compilerPath: string,
  deps: CompileDeps,
  signal: AbortSignal,
): Promise<CompilerRun | undefined> {
  const text = source.toString('utf8');
  const known = lineMarkerPaths(text);
  const wanted = diagnosticFiles(first.stderr.toString('utf8'))
    .filter((path) => known.has(path))
    .slice(0, MAX_EXCERPT_FILES);
  if (wanted.length === 0) return undefined;
  const reply = awaitSourceFiles(call, EXCERPT_FILES_TIMEOUT_MS, signal);
  call.write({ wanted: { paths: wanted } });
  const files = await reply;
  if (!files) return undefined;

  const root = join(jobDir, 'mirror');
  const cwd = header.cwd || '/';
  const renames = new Map<string, string>();
  let budget = deps.limits.maxSourceBytes;
  for (const file of files) {
    if (file.missing || !file.content || !wanted.includes(file.path)) continue;
    const target = mirrorPath(root, cwd, file.path);
    if (!target) continue;
    let content: Buffer;
    try {
      content = decodeChunk(file.content, budget);
    } catch (err) {
      // The client's mistake, not the worker's: say so with the status the source's chunks get.
      const e = err as FerryError;
      throw new JobRefused(grpc.status.INVALID_ARGUMENT, e.code, `source file ${file.path} for excerpts: ${e.message}`, e.hint);
    }
    budget -= content.length;
    await mkdir(dirname(target), { recursive: true });
    await writeFile(target, content, { mode: 0o600 });
    // Absolute names would point outside the mirror: the line markers name the mirror copy instead.
    if (isAbsolute(file.path)) renames.set(file.path, target);
  }
  const input = join(jobDir, 'excerpts.' + SOURCE_EXTENSION[header.language]);
  await writeFile(input, rewriteLineMarkers(text, renames), { mode: 0o600 });
  const workDir = join(root, cwd);
  await mkdir(workDir, { recursive: true });
  const again = await runCompiler(
    compilerPath,
    [...header.args, '-o', join(jobDir, 'excerpts.out'), input],
    workDir,
    compilerEnv(header, jobDir),
    { jobDir, name: 'excerpts' },
    deps,
    signal,
  );
  // The same compile must fail or succeed the same way; anything else and the first run stands.
  if (again.exitCode !== first.exitCode) return undefined;
  const unmirror = (b: Buffer) => Buffer.from(b.toString('utf8').split(root).join(''));
  return { ...again, stdout: unmirror(again.stdout), stderr: unmirror(again.stderr) };
}

/**
 * The handler of one job. max_jobs_per_connection: a connection's jobs over its cap wait for its
 * earlier jobs rather than fail. A coordinator sends as many jobs as the slots it was told (/N),
 * which can exceed the cap, and a refusal would make it compile those jobs locally. A waiting job
 * is held before its source is read, and it stays out of the shared slot queue, so other clients'
 * jobs are not stuck behind one client's surplus. Its cancellation still ends it.
 */
export function makeJobHandler(deps: CompileDeps) {
  const turns = new WeakMap<object, Slots>();
  const turnsOf = (call: Call): Slots => {
    let slots = turns.get(call.connection);
    if (!slots) {
      slots = new Slots(deps.limits.maxJobsPerConnection);
      turns.set(call.connection, slots);
    }
    return slots;
  };

  return (call: Call): void => {
    const aborter = new AbortController();
    call.once('cancelled', () => aborter.abort(new FerryError('cancelled', 'client cancelled the job')));
    let jobDir: string | undefined;
    let completed = false;
    let jobId = `#${call.number}`;
    let releaseTurn: (() => void) | undefined;
    const micros = (from: bigint) => Number((process.hrtime.bigint() - from) / 1000n);

    (async () => {
      releaseTurn = await turnsOf(call).acquire(aborter.signal);
      const started = process.hrtime.bigint();
      const { header, source } = await receiveJob(call, deps, aborter.signal);
      jobId = header.jobId || jobId;
      const receiveUs = micros(started);
      const compiler = deps.compilers.byName.get(header.compiler)!;
      const queuedAt = process.hrtime.bigint();
      const release = await deps.slots.acquire(aborter.signal);
      try {
        const queuedUs = micros(queuedAt);
        try {
          jobDir = deps.jobDirs.take();
        } catch (err) {
          diskError(err);
        }
        const placed = await placeSource(jobDir, header, source).catch(diskError);
        const compileAt = process.hrtime.bigint();
        const env = compilerEnv(header, jobDir);
        // Only a preprocessed source (gcc's), placed as source.<ext>, has the shape the steps are learnt for.
        const steps = header.sourcePath
          ? undefined
          : deps.compileSteps?.stepsFor({
              driver: compiler.path,
              driverVersion: compiler.sha256,
              args: header.args,
              output: placed.output,
              input: basename(placed.input),
              jobDir,
              env: jobEnv(header),
            });
        const direct = steps && !aborter.signal.aborted ? await runSteps(steps, placed.cwd, env, jobDir, deps, aborter.signal) : undefined;
        const run =
          direct ??
          (await runCompiler(
            compiler.path,
            [...header.args, ...placed.extraArgs, '-o', placed.output, placed.input],
            placed.cwd,
            env,
            { jobDir, name: 'compiler' },
            deps,
            aborter.signal,
          ));
        const compileUs = micros(compileAt);
        deps.counters.jobsDone++;
        // The compiler could not write its temporaries or output: the disk, not the source, failed.
        if (run.exitCode !== 0 && /No space left on device|Disk quota exceeded/.test(run.stderr.toString('utf8'))) {
          throw new JobRefused(grpc.status.UNAVAILABLE, 'disk-full', "the worker's disk is full (the compiler could not write)", "Free space in the worker's tmpdir.");
        }
        if (aborter.signal.aborted) return;
        const outputSizes = await sendOutputs(call, header, jobDir, run, deps);
        let shown = run;
        if (header.sourceExcerpts && hasLocatedDiagnostics(run.stderr.toString('utf8'))) {
          shown = (await diagnosticsWithExcerpts(call, header, source, jobDir, run, compiler.path, deps, aborter.signal)) ?? run;
        }
        call.write({
          result: {
            exitCode: run.exitCode,
            signal: run.signal,
            stdout: shown.stdout,
            stderr: shown.stderr,
            outputSizes,
            timings: { queuedUs, receiveUs, compileUs },
          },
        });
        call.end();
        completed = true;
        deps.log(`job ${jobId} ${header.sourceName || '?'}: ${header.compiler} exit ${run.exitCode} in ${(compileUs / 1000).toFixed(0)} ms${direct ? ` (cc1 ${direct.piped ? 'piped into' : 'and'} as, without the driver${direct.forked ? ', forked' : ''})` : ''}`);
      } finally {
        release();
      }
    })()
      .catch((err: unknown) => {
        if (aborter.signal.aborted) {
          deps.log(`job ${jobId} cancelled by the client`);
          return;
        }
        const status = err instanceof JobRefused ? err.status : grpc.status.INTERNAL;
        const details = err instanceof FerryError ? err.describe() : errorMessage(err);
        deps.log(`job ${jobId} refused: ${details.replace(/\n/g, ' ')}`);
        call.fail(status, details);
      })
      .finally(() => {
        releaseTurn?.();
        if (jobDir) {
          const dir = jobDir;
          // After this turn of the event loop, so the reply's frames go out first. Only a job that
          // ran to its end hands on its directory; any other's is removed.
          setImmediate(() => deps.jobDirs.give(dir, completed));
        }
      });
  };
}
