/**
 * Starts the compilers of jobs through ferry-worker-exec (worker/native/exec-helper.c), a small child
 * started once, so that the worker's own large process is never forked per job: Node's
 * child_process.spawn forks it (page tables, then copy-on-write faults), ~3 ms of the worker's CPU per
 * job. When the helper cannot be used, compilers are started with child_process.spawn as before.
 *
 * Either way a compiler runs in its own session and process group (killed as a group on timeout or
 * cancellation), with stdin /dev/null and stdout/stderr written to files the caller names.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants } from 'node:fs';
import { open } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { FerryError, errorMessage } from '../proto/errors';
import { exitStatus } from '../proto/exit-status';
import { JobRefused } from './job-refused';

/** Where the build puts the helper: dist/bin next to dist/worker (also in the .deb's tree). */
export const DEFAULT_HELPER_PATH = join(__dirname, '..', 'bin', 'ferry-worker-exec');

/** The "ready <version>" the helper must announce; a stale binary from another build is not used. */
export const HELPER_PROTOCOL_VERSION = 3;

/** The helper refuses bigger requests; checked here too, so such a job fails without a round trip. */
export const MAX_REQUEST_BYTES = 4 << 20;

/** A helper that has not said "ready" by then is not going to. */
const HELPER_START_TIMEOUT_MS = 10_000;

/** O_NOFOLLOW: a capture file is never written through a symlink, as the helper opens it. */
const CAPTURE_FLAGS = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_TRUNC | fsConstants.O_NOFOLLOW;

export interface SpawnRequest {
  path: string;
  args: string[];
  cwd: string;
  env: NodeJS.ProcessEnv;
  /** Files (absolute paths) created 0600 for the program's stdout and stderr. */
  stdoutPath: string;
  stderrPath: string;
  /** The socket of a fork server of `path` (proto/fork-server.ts): the job is forked from it, not exec'd. */
  forkServer?: string;
}

export interface RunOptions {
  cwd: string;
  env: NodeJS.ProcessEnv;
  stdoutPath: string;
  stderrPath: string;
  /** Aborting kills the process group; the run then resolves with the signal. */
  signal?: AbortSignal;
  /** Past this, the process group is killed and the run resolves with timedOut. */
  timeoutMs?: number;
  onStarted?: (pid: number) => void;
  /**
   * A fork server of this program (its socket): the helper has it fork the job. One that cannot take
   * it (gone, refusing) leaves the job to be exec'd as usual, and is logged once.
   */
  forkServer?: string;
}

export interface RunResult {
  pid: number;
  /** The exit code, or null when a signal ended the process. */
  code: number | null;
  /** The signal's name ("SIGKILL"), or null. */
  signal: string | null;
  /** Shell-style: the code, or 128 + the signal number. */
  status: number;
  timedOut: boolean;
  /** A fork server ran it (RunOptions.forkServer), not exec. */
  forked: boolean;
}

/** A program that could not be started: nothing ran. `errno` is the system's code ("ENOENT"). */
export class ExecError extends FerryError {
  constructor(readonly errno: string, message: string) {
    super('exec-failed', message, 'Check that the program exists and is executable, and that its directory and output files can be written.');
    this.name = 'ExecError';
  }
}

// ---------- the protocol (pure) ----------

/** What the helper is asked: to start a program, or to make a named pipe. */
export type HelperRequest = SpawnRequest | { fifo: string };

/**
 * One request: "<id> <length>\n", then NUL-terminated fields: "spawn", path, cwd, stdout file,
 * stderr file, argc, argv (argv[0] is the path, as child_process.spawn sets it), envc, env
 * ("NAME=value"); "fork", the fork server's socket, then the same as spawn; or "fifo", path.
 */
export function encodeRequest(id: number, request: HelperRequest): Buffer {
  let fields: string[];
  if ('fifo' in request) {
    fields = ['fifo', request.fifo];
  } else {
    const env = Object.entries(request.env).flatMap(([name, value]) => (value === undefined ? [] : [`${name}=${value}`]));
    const argv = [request.path, ...request.args];
    const kind = request.forkServer === undefined ? ['spawn'] : ['fork', request.forkServer];
    fields = [...kind, request.path, request.cwd, request.stdoutPath, request.stderrPath, String(argv.length), ...argv, String(env.length), ...env];
  }
  const bad = fields.find((field) => field.includes('\0'));
  if (bad !== undefined) throw new ExecError('EINVAL', `a NUL byte in ${JSON.stringify(bad.slice(0, 80))}: it cannot be passed to a program`);
  const body = Buffer.from(`${fields.join('\0')}\0`);
  if (body.length > MAX_REQUEST_BYTES) {
    throw new ExecError('E2BIG', `arguments and environment of ${body.length} bytes are over the limit of ${MAX_REQUEST_BYTES} bytes`);
  }
  return Buffer.concat([Buffer.from(`${id} ${body.length}\n`), body]);
}

export type Reply =
  | { kind: 'ready'; version: number }
  | { kind: 'started'; id: number; pid: number }
  | { kind: 'exited'; id: number; code: number | null; signalNumber: number | null }
  | { kind: 'made'; id: number }
  | { kind: 'failed'; id: number; errno: number; message: string }
  /** A fork request's server could not take the job: nothing ran, and it may be spawned instead. */
  | { kind: 'unforked'; id: number; errno: number; message: string };

/** A reply line of the helper, or undefined when it is not one (the helper is then not trusted further). */
export function parseReply(line: string): Reply | undefined {
  let m = /^ready (\d+)$/.exec(line);
  if (m) return { kind: 'ready', version: Number(m[1]) };
  m = /^started (\d+) (\d+)$/.exec(line);
  // A pid below 2 would make the group kill hit the worker's own group, or everything.
  if (m && Number(m[2]) > 1) return { kind: 'started', id: Number(m[1]), pid: Number(m[2]) };
  m = /^exited (\d+) (?:(\d+)|- (\d+))$/.exec(line);
  if (m) return { kind: 'exited', id: Number(m[1]), code: m[2] === undefined ? null : Number(m[2]), signalNumber: m[3] === undefined ? null : Number(m[3]) };
  m = /^made (\d+)$/.exec(line);
  if (m) return { kind: 'made', id: Number(m[1]) };
  m = /^(failed|unforked) (\d+) (\d+) (.*)$/.exec(line);
  if (m) return { kind: m[1] as 'failed' | 'unforked', id: Number(m[2]), errno: Number(m[3]), message: m[4] };
  return undefined;
}

const SIGNAL_NAMES = new Map(Object.entries(osConstants.signals).map(([name, number]) => [number as number, name]));
const ERRNO_NAMES = new Map(Object.entries(osConstants.errno).map(([name, number]) => [number as number, name]));

/** "SIGKILL" for 9; "SIG34" for a signal Node has no name for (a real-time one). */
export function signalName(number: number): string {
  return SIGNAL_NAMES.get(number) ?? `SIG${number}`;
}

/** "ENOENT" for 2; "errno 999" for a number Node does not know. */
export function errnoName(number: number): string {
  return ERRNO_NAMES.get(number) ?? `errno ${number}`;
}

/** The shell-style status of an "exited" reply: the code, or 128 + the signal number. */
export function statusOfExit(code: number | null, signalNumber: number | null): number {
  return code ?? 128 + (signalNumber ?? 0);
}

/** How a process ended, for a log line: "killed by SIGKILL", "exited with status 2". */
export function describeEnd(code: number | null, signal: string | null): string {
  if (signal) return `killed by ${signal}`;
  return `exited with status ${code}`;
}

// ---------- running programs ----------

interface Waiter {
  request: HelperRequest;
  pid?: number;
  started(pid: number): void;
  exited(code: number | null, signal: string | null, status: number): void;
  /** A fifo request's answer. */
  made?(): void;
  failed(err: Error): void;
  /** A fork request's server could not take it (nothing ran); without this, a failure. */
  unforked?(err: ExecError): void;
}

/** The fork server a request is for, if it is a fork request. */
const forkServerOf = (request: HelperRequest): string | undefined => ('forkServer' in request ? request.forkServer : undefined);

/** Kills a process group; one that is gone already is what was wanted. */
function killGroup(pid: number, log: (line: string) => void): void {
  // -0 and -1 are this process's own group and every process: never.
  if (!Number.isInteger(pid) || pid < 2) return log(`refusing to kill process group ${pid}`);
  try {
    process.kill(-pid, 'SIGKILL');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') log(`cannot kill process group ${pid}: ${errorMessage(err)}`);
  }
}

/** The fallback: child_process.spawn, which forks the worker. Same files, same session and group. */
async function spawnDirect(request: SpawnRequest, waiter: Waiter): Promise<void> {
  const handles = [];
  try {
    for (const [path, which] of [[request.stdoutPath, 'stdout'], [request.stderrPath, 'stderr']]) {
      try {
        handles.push(await open(path, CAPTURE_FLAGS, 0o600));
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
        return waiter.failed(new ExecError(code, `cannot create the ${which} file: ${errorMessage(err)}`));
      }
    }
    let child: ChildProcess;
    try {
      // detached: its own session and process group, killed as one.
      child = spawn(request.path, request.args, { cwd: request.cwd, env: request.env, stdio: ['ignore', handles[0].fd, handles[1].fd], detached: true });
    } catch (err) {
      return waiter.failed(new ExecError((err as NodeJS.ErrnoException).code ?? 'EINVAL', errorMessage(err)));
    }
    let settled = false;
    child.once('spawn', () => waiter.started(child.pid!));
    child.once('error', (err: NodeJS.ErrnoException) => {
      if (settled) return;
      settled = true;
      waiter.failed(new ExecError(err.code ?? 'EIO', err.message));
    });
    child.once('exit', (code, signal) => {
      if (settled) return;
      settled = true;
      waiter.exited(code, signal, exitStatus(code, signal));
    });
  } finally {
    // The child has its own copies (spawn forked before returning).
    for (const handle of handles) await handle.close();
  }
}

/** One helper process, from its start to its end. */
class HelperProcess {
  readonly child: ChildProcess;
  readonly waiters = new Map<number, Waiter>();
  ready = false;
  private pending = '';
  private lastError = '';
  private cause = '';
  private readonly startTimer: NodeJS.Timeout;

  constructor(
    readonly path: string,
    private readonly log: (line: string) => void,
    private readonly onGone: (helper: HelperProcess, cause: string) => void,
  ) {
    // detached: its own session, so a terminal's Ctrl-C reaches the worker (which stops gracefully), not it.
    this.child = spawn(path, [], { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    this.child.once('error', (err) => (this.cause ||= `cannot start it: ${err.message}`));
    this.child.stdin!.on('error', (err: NodeJS.ErrnoException) => {
      // EPIPE is how a write meets a helper that has exited; 'close' reports how it exited.
      if (err.code !== 'EPIPE') this.cause ||= `writing to it failed: ${err.message}`;
    });
    this.child.stdout!.setEncoding('utf8');
    this.child.stdout!.on('data', (text: string) => this.receive(text));
    this.child.stderr!.setEncoding('utf8');
    // It writes only when something is wrong (then it exits): each line goes to the worker's log.
    let partial = '';
    this.child.stderr!.on('data', (text: string) => {
      const lines = (partial + text).split('\n');
      partial = lines.pop()!;
      for (const line of lines.filter(Boolean)) this.logError(line);
    });
    this.child.stderr!.once('end', () => partial && this.logError(partial));
    // 'close': it ended and every reply it wrote has been handled.
    this.child.once('close', (code, signal) => {
      clearTimeout(this.startTimer);
      const end = this.cause || (code !== null && code < 0 ? 'it could not be started' : describeEnd(code, signal));
      this.onGone(this, this.lastError && !this.cause ? `${end}: ${this.lastError}` : end);
    });
    this.startTimer = setTimeout(() => this.abandon(`it did not say it was ready within ${HELPER_START_TIMEOUT_MS / 1000} s`), HELPER_START_TIMEOUT_MS);
    this.startTimer.unref();
    this.setRef(false);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  private logError(line: string): void {
    this.lastError = line;
    this.log(line);
  }

  submit(id: number, frame: Buffer, waiter: Waiter): void {
    this.waiters.set(id, waiter);
    this.setRef(true);
    this.child.stdin!.write(frame);
  }

  /** Closes its stdin: it exits at once. */
  end(): void {
    this.child.stdin!.end();
  }

  /** Kills it for `cause`; the 'close' handler does the rest. */
  abandon(cause: string): void {
    this.cause ||= cause;
    this.child.kill('SIGKILL');
  }

  /** An idle helper does not keep the process alive; one with programs to report on does. */
  private setRef(on: boolean): void {
    const handles = [this.child, this.child.stdin, this.child.stdout, this.child.stderr] as Array<{ ref?: () => void; unref?: () => void } | null>;
    for (const handle of handles) (on ? handle?.ref : handle?.unref)?.call(handle);
  }

  private receive(text: string): void {
    this.pending += text;
    let newline: number;
    while ((newline = this.pending.indexOf('\n')) >= 0) {
      const line = this.pending.slice(0, newline);
      this.pending = this.pending.slice(newline + 1);
      this.handle(line);
    }
  }

  private handle(line: string): void {
    const reply = parseReply(line);
    if (!reply) return this.abandon(`it sent a line that is not a reply: ${JSON.stringify(line.slice(0, 200))}`);
    if (reply.kind === 'ready') {
      if (reply.version !== HELPER_PROTOCOL_VERSION) {
        return this.abandon(`it speaks protocol ${reply.version}, this worker ${HELPER_PROTOCOL_VERSION} (a binary from another build)`);
      }
      clearTimeout(this.startTimer);
      this.ready = true;
      return;
    }
    const waiter = this.waiters.get(reply.id);
    if (!this.ready || !waiter) return this.abandon(`it replied "${line}" for no request it had`);
    // "made" answers a fifo request and only that, "unforked" a fork request; "failed" answers any.
    if (reply.kind !== 'failed' && ((reply.kind === 'made') !== ('fifo' in waiter.request) || (reply.kind === 'unforked' && forkServerOf(waiter.request) === undefined))) {
      return this.abandon(`it replied "${line}" to a request of another kind`);
    }
    if (reply.kind === 'started') {
      waiter.pid = reply.pid;
      waiter.started(reply.pid);
      return;
    }
    this.waiters.delete(reply.id);
    if (this.waiters.size === 0) this.setRef(false);
    if (reply.kind === 'failed' || reply.kind === 'unforked') {
      const err = new ExecError(errnoName(reply.errno), `${reply.message} (${errnoName(reply.errno)})`);
      if (reply.kind === 'unforked' && waiter.unforked) waiter.unforked(err);
      else waiter.failed(err);
    } else if (reply.kind === 'made') {
      waiter.made?.();
    } else {
      const signal = reply.signalNumber === null ? null : signalName(reply.signalNumber);
      waiter.exited(reply.code, signal, statusOfExit(reply.code, reply.signalNumber));
    }
  }
}

export interface ExecHelperOptions {
  /** The helper binary; DEFAULT_HELPER_PATH unless given. */
  path?: string;
  /** The worker's log (its stderr), one line per call. */
  log: (line: string) => void;
}

/**
 * Runs programs through the helper, starting a new one when the last has died; falls back to
 * child_process.spawn for good when the helper is missing or cannot start.
 */
export class ExecHelper {
  readonly path: string;
  private helper?: HelperProcess;
  private fallbackReason?: string;
  private nextId = 1;
  private closing = false;
  private readonly log: (line: string) => void;
  /** Fork servers that once could not take a job: said once each. */
  private readonly forkServersTold = new Set<string>();

  constructor(options: ExecHelperOptions) {
    this.path = options.path ?? DEFAULT_HELPER_PATH;
    this.log = options.log;
  }

  /** Starts the helper now, so that one that cannot be used is reported when the worker starts. */
  start(): void {
    this.current();
  }

  /** Why compilers are started with child_process.spawn, or undefined while the helper is used. */
  get fallback(): string | undefined {
    return this.fallbackReason;
  }

  /** The running helper's pid (tests kill it). */
  get helperPid(): number | undefined {
    return this.helper?.pid;
  }

  run(path: string, args: string[], options: RunOptions): Promise<RunResult> {
    if (this.closing) return Promise.reject(stopping());
    if (options.signal?.aborted) return Promise.reject(options.signal.reason);
    return new Promise((resolve, reject) => {
      let pid: number | undefined;
      let killWanted = false;
      let timedOut = false;
      const kill = () => {
        if (pid === undefined) killWanted = true;
        else killGroup(pid, this.log);
      };
      const timer = options.timeoutMs === undefined ? undefined : setTimeout(() => {
        timedOut = true;
        kill();
      }, options.timeoutMs);
      options.signal?.addEventListener('abort', kill, { once: true });
      const finish = () => {
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', kill);
      };
      const request: SpawnRequest = { path, args, cwd: options.cwd, env: options.env, stdoutPath: options.stdoutPath, stderrPath: options.stderrPath };
      const waiter: Waiter = {
        request: options.forkServer === undefined ? request : { ...request, forkServer: options.forkServer },
        started: (startedPid) => {
          pid = startedPid;
          options.onStarted?.(startedPid);
          // Cancelled or timed out before the pid was known.
          if (killWanted) killGroup(startedPid, this.log);
        },
        exited: (code, signal, status) => {
          finish();
          resolve({ pid: pid ?? 0, code, signal, status, timedOut, forked: forkServerOf(waiter.request) !== undefined });
        },
        failed: (err) => {
          finish();
          reject(err);
        },
        // Nothing ran: a fork server that could not take the job leaves it to be exec'd. (A capture
        // file the helper could not make, or arguments that cannot be sent, are failures: an exec
        // would fail the same way.)
        unforked: (err) => {
          const socket = forkServerOf(waiter.request);
          if (this.closing || socket === undefined) return waiter.failed(err);
          this.forkFailed(socket, path, err);
          waiter.request = request;
          this.launch(waiter);
        },
      };
      this.launch(waiter);
    });
  }

  private forkFailed(socket: string, path: string, err: ExecError): void {
    if (this.forkServersTold.has(socket)) return;
    this.forkServersTold.add(socket);
    this.log(`the fork server of ${path} (${socket}) could not take a job: ${err.message}; such jobs are exec'd (said once per server)`);
  }

  /**
   * Makes a named pipe (0600) at `path`, or finds one there. Only the helper can (Node has no
   * mkfifo): without it this rejects with ExecError ENOSYS and the caller does without.
   */
  makeFifo(path: string): Promise<void> {
    if (this.closing) return Promise.reject(stopping());
    return new Promise((resolve, reject) => {
      this.launch({
        request: { fifo: path },
        // Not reached: a reply of the spawn kind to this request makes the helper abandoned (handle).
        started: () => undefined,
        exited: () => undefined,
        made: resolve,
        failed: reject,
      });
    });
  }

  /** Ends the helper (it exits at EOF) and kills what still runs: the worker is stopping. */
  async close(): Promise<void> {
    this.closing = true;
    const helper = this.helper;
    if (!helper) return;
    for (const waiter of helper.waiters.values()) if (waiter.pid !== undefined) killGroup(waiter.pid, this.log);
    const gone = new Promise<void>((resolve) => helper.child.once('close', () => resolve()));
    if (helper.child.exitCode === null && helper.child.signalCode === null) {
      helper.end();
      const force = setTimeout(() => helper.abandon('it did not exit at the end of its input'), 2000);
      await gone;
      clearTimeout(force);
    }
  }

  private launch(waiter: Waiter): void {
    const helper = this.current();
    const { request } = waiter;
    if (!helper) {
      if ('fifo' in request) {
        return waiter.failed(new ExecError('ENOSYS', `named pipes are made by ferry-worker-exec, which is not in use (${this.fallbackReason ?? 'stopping'})`));
      }
      // Nothing forks without the helper: the job is spawned, and its result says so.
      const spawned: SpawnRequest = { ...request, forkServer: undefined };
      waiter.request = spawned;
      void spawnDirect(spawned, waiter).catch((err: unknown) => waiter.failed(err as Error));
      return;
    }
    let frame: Buffer;
    try {
      frame = encodeRequest(this.nextId, waiter.request);
    } catch (err) {
      return waiter.failed(err as Error);
    }
    helper.submit(this.nextId++, frame, waiter);
  }

  /** The helper to use: the running one, a new one, or none (fall back to child_process.spawn). */
  private current(): HelperProcess | undefined {
    if (this.fallbackReason !== undefined || this.closing) return undefined;
    if (this.helper) return this.helper;
    try {
      accessSync(this.path, fsConstants.X_OK);
    } catch (err) {
      this.fallBack(`it is missing or not executable (${(err as NodeJS.ErrnoException).code ?? errorMessage(err)})`);
      return undefined;
    }
    try {
      this.helper = new HelperProcess(this.path, this.log, (helper, cause) => this.gone(helper, cause));
    } catch (err) {
      // child_process.spawn throws for some errors (EPERM...) instead of emitting them.
      this.fallBack(`it cannot be started (${errorMessage(err)})`);
    }
    return this.helper;
  }

  private fallBack(reason: string): void {
    this.fallbackReason = reason;
    this.log(
      `ferry-worker-exec (${this.path}) cannot be used: ${reason}; compilers are started with Node's child_process.spawn instead, ` +
        'which forks the whole worker for every job (about 3 ms more of the worker\'s CPU per job, more as its memory grows)',
    );
  }

  private gone(helper: HelperProcess, cause: string): void {
    if (this.helper === helper) this.helper = undefined;
    const waiters = [...helper.waiters.values()];
    helper.waiters.clear();
    if (this.closing) {
      for (const waiter of waiters) waiter.failed(stopping());
      return;
    }
    if (!helper.ready) {
      // It never ran anything: what was sent to it runs the other way.
      this.fallBack(cause);
      for (const waiter of waiters) this.launch(waiter);
      return;
    }
    this.log(
      `ferry-worker-exec (pid ${helper.pid}) died: ${cause}; ` +
        (waiters.length > 0 ? `${waiters.length} running program(s) fail, to be retried on another host; ` : '') +
        'the next job starts a new one',
    );
    for (const waiter of waiters) {
      // Orphaned compilers would go on writing into job directories that are being removed.
      if (waiter.pid !== undefined) killGroup(waiter.pid, this.log);
      waiter.failed(
        new JobRefused(
          grpc.status.UNAVAILABLE,
          'exec-helper-died',
          `ferry-worker-exec, which started the compiler, died (${cause})`,
          'The job is retried on another host; the worker starts a new ferry-worker-exec. If this repeats, see the worker\'s log.',
        ),
      );
    }
  }
}

function stopping(): JobRefused {
  return new JobRefused(grpc.status.UNAVAILABLE, 'worker-stopping', 'the worker is stopping', 'The job is retried on another host.');
}
