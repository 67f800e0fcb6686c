/**
 * Fork servers: one started copy of a program that jobs run often (cli/native/fork-server.c), which
 * forks a process per job instead of exec'ing the program afresh. The coordinator keeps them for the
 * preprocessors (cc1 -E; launchers reach a server through its socket in the runtime directory), the
 * worker for the steps it runs without gcc's driver (cc1, as; its exec helper is the client). While a
 * server starts, and after one fails, jobs exec the program as before.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';

/** The shared library cli/build.mjs builds beside the launcher. */
export const FORK_SERVER_LIBRARY = join(__dirname, '..', 'lib', 'ferry-fork-server.so');
const START_TIMEOUT_MS = 10_000;
/** A server that fails is started again after this, doubling, up to the last. */
const RETRY_MS = [1000, 10_000, 60_000, 600_000];
/** How often a server's program is looked at again: an upgraded cc1 gets a new server. */
const RECHECK_MS = 2000;
/** sockaddr_un's sun_path, less its terminating NUL: a longer runtime directory goes without servers. */
const MAX_UNIX_PATH_BYTES = 107;

/**
 * Whether a job's environment lets a forked copy stand for an exec: the dynamic loader and libc
 * read these before main(), where the server's copy has already run with its own environment.
 * FERRY_FORK_SERVER=0 turns the servers off.
 */
export function forkServerFits(env: NodeJS.ProcessEnv): boolean {
  if (env.FERRY_FORK_SERVER === '0') return false;
  for (const name in env) {
    if (name.startsWith('LD_') || name.startsWith('MALLOC_') || name === 'GLIBC_TUNABLES') return false;
  }
  return true;
}

export type HeapMode = 'huge-pages' | 'populate';

/** Which file a program is: a changed one (an upgrade) needs a new server. */
function identity(path: string): string | undefined {
  const info = statSync(path, { throwIfNoEntry: false });
  return info ? `${info.dev}:${info.ino}:${info.size}:${info.mtimeMs}` : undefined;
}

interface Server {
  program: string;
  socket: string;
  identity: string;
  child?: ChildProcess;
  ready: boolean;
  failures: number;
  retryAt: number;
  checkedAt: number;
}

export class ForkServers {
  private readonly servers = new Map<string, Server>();
  private closed = false;
  private toldUnusable = false;

  /**
   * `heap`: what the jobs' heap chunks get, transparent huge pages or their pages made at once
   * (fork-server.c says which pays where: huge pages for preprocessors, populate for compiles).
   */
  constructor(
    private readonly dir: string,
    private readonly log: (line: string) => void,
    private readonly library = FORK_SERVER_LIBRARY,
    private readonly heap?: HeapMode,
  ) {}

  /** The socket of a ready server for `program`, or undefined: then one is started for later jobs. */
  socketFor(program: string, env: NodeJS.ProcessEnv, now = Date.now()): string | undefined {
    if (this.closed || !forkServerFits(env)) return undefined;
    let server = this.servers.get(program);
    if (server && now - server.checkedAt > RECHECK_MS) {
      server.checkedAt = now;
      if (identity(program) !== server.identity) {
        this.log(`fork server for ${program}: the program changed; starting a new one`);
        this.stop(server);
        this.servers.delete(program);
        server = undefined;
      }
    }
    if (!server) {
      const id = identity(program);
      const socket = join(this.dir, `fork-${this.servers.size}-${basename(program)}.sock`);
      const unusable = !existsSync(this.library)
        ? `${this.library} is missing (npm run build makes it)`
        : Buffer.byteLength(socket) > MAX_UNIX_PATH_BYTES ? `the runtime directory's name is too long for a socket (${socket})` : undefined;
      if (unusable && !this.toldUnusable) {
        this.toldUnusable = true;
        this.log(`no fork servers: ${unusable}; programs are exec'd for every job`);
      }
      if (!id || unusable) return undefined;
      server = { program, socket, identity: id, ready: false, failures: 0, retryAt: 0, checkedAt: now };
      this.servers.set(program, server);
    }
    if (server.ready) return server.socket;
    if (!server.child && now >= server.retryAt) this.start(server);
    return undefined;
  }

  private start(server: Server): void {
    // Nothing of this process's environment: before main() the copy must be what exec makes.
    const child = spawn(server.program, [], {
      env: { LD_PRELOAD: this.library, FERRY_FORK_SERVER_SOCKET: server.socket, ...(this.heap ? { FERRY_FORK_SERVER_HEAP: this.heap } : {}) },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    server.child = child;
    let output = '';
    const timer = setTimeout(() => {
      this.failed(server, child, `not ready within ${START_TIMEOUT_MS / 1000} s`);
      child.kill('SIGKILL');
    }, START_TIMEOUT_MS);
    const onData = (data: Buffer) => {
      output += data.toString();
      if (!server.ready && output.includes('ready\n')) {
        clearTimeout(timer);
        server.ready = true;
        server.failures = 0;
        this.log(`fork server for ${server.program} (pid ${child.pid}) on ${server.socket}`);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (data: Buffer) => this.log(`fork server for ${server.program}: ${data.toString().trim()}`));
    child.stdin!.on('error', () => undefined); // a server that died: its exit says so
    child.on('error', (err) => {
      clearTimeout(timer);
      this.failed(server, child, err.message);
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (!this.closed) this.failed(server, child, signal ? `killed by ${signal}` : `exited with status ${code}`);
    });
  }

  /** A server that did not start or went away: jobs exec the program until it is started again. */
  private failed(server: Server, child: ChildProcess, why: string): void {
    if (server.child !== child) return;
    server.child = undefined;
    server.ready = false;
    const wait = RETRY_MS[Math.min(server.failures, RETRY_MS.length - 1)];
    server.failures++;
    server.retryAt = Date.now() + wait;
    this.log(`fork server for ${server.program}: ${why}; its jobs are exec'd again, next try in ${wait / 1000} s`);
  }

  private stop(server: Server): void {
    const child = server.child;
    server.child = undefined;
    server.ready = false;
    // Its stdin closing stops it, and its running jobs with it (their clients see them killed).
    child?.stdin?.end();
    child?.kill('SIGTERM');
  }

  close(): void {
    this.closed = true;
    for (const server of this.servers.values()) this.stop(server);
    this.servers.clear();
  }
}
