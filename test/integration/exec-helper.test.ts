/**
 * ferry-worker-exec and worker/exec-helper.ts as real processes: exit statuses, signals, exec failures,
 * working directory, environment and captured output, process-group kills, many runs at once, a helper
 * killed mid-run, the fallback to child_process.spawn, the raw protocol's limits, and the worker using it.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { leftoverFiles } from '../support/job-files';
import { compileOnce } from '../support/jobs';
import { loadWorkerProto } from '../../proto/load';
import { ExecError, ExecHelper, HELPER_PROTOCOL_VERSION, encodeRequest, type RunOptions } from '../../worker/exec-helper';
import { JobRefused } from '../../worker/job-refused';
import { ROOT, startProcess, WORKER_MAIN, type Started } from '../support/processes';

const HELPER = join(ROOT, 'dist', 'bin', 'ferry-worker-exec');
const FORK_SERVER_LIBRARY = join(ROOT, 'dist', 'lib', 'ferry-fork-server.so');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let dir: string;
const helpers: ExecHelper[] = [];

/** An ExecHelper whose log lines are kept; closed after the file's tests. */
function newHelper(path = HELPER): { exec: ExecHelper; log: string[] } {
  const log: string[] = [];
  const exec = new ExecHelper({ path, log: (line) => log.push(line) });
  helpers.push(exec);
  return { exec, log };
}

let runCount = 0;
/** Run options with fresh capture files in the test directory. */
function options(extra: Partial<RunOptions> = {}): RunOptions & { read: () => { stdout: string; stderr: string } } {
  const n = runCount++;
  const o = { cwd: dir, env: { PATH: '/usr/bin:/bin' }, stdoutPath: join(dir, `run-${n}.stdout`), stderrPath: join(dir, `run-${n}.stderr`), ...extra };
  return { ...o, read: () => ({ stdout: readFileSync(o.stdoutPath, 'utf8'), stderr: readFileSync(o.stderrPath, 'utf8') }) };
}

/** Alive: in /proc and not a zombie. */
function isRunning(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1][0] !== 'Z';
  } catch {
    return false;
  }
}

async function waitFor(what: string, test: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!test()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** A shell command that starts a grandchild `sleep`, writes its pid to `pidFile`, and waits. */
function withGrandchild(pidFile: string): string[] {
  return ['-c', `sleep 300 & echo $! > ${pidFile}; wait`];
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-exec-helper-'));
  expect(existsSync(HELPER), `${HELPER} is built by npm run build`).toBe(true);
});

afterAll(async () => {
  for (const exec of helpers) await exec.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('running programs through ferry-worker-exec', () => {
  it('reports exit codes', async () => {
    const { exec, log } = newHelper();
    for (const code of [0, 1, 3, 255]) {
      const result = await exec.run('/bin/sh', ['-c', `exit ${code}`], options());
      expect(result).toMatchObject({ code, signal: null, status: code, timedOut: false });
      expect(result.pid).toBeGreaterThan(1);
    }
    expect(exec.fallback).toBeUndefined();
    expect(exec.helperPid).toBeGreaterThan(1);
    expect(log).toEqual([]);
  });

  it('reports a death by signal as the signal and 128 + its number', async () => {
    const { exec } = newHelper();
    expect(await exec.run('/bin/sh', ['-c', 'kill -TERM $$'], options())).toMatchObject({ code: null, signal: 'SIGTERM', status: 143 });
    expect(await exec.run('/bin/sh', ['-c', 'kill -SEGV $$'], options())).toMatchObject({ code: null, signal: 'SIGSEGV', status: 139 });
  });

  it('rejects a program that is missing or not executable with an ExecError, and runs nothing', async () => {
    const { exec } = newHelper();
    const missing = await exec.run(join(dir, 'no-such-compiler'), [], options()).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(ExecError);
    expect(missing).toMatchObject({ errno: 'ENOENT', code: 'exec-failed', message: 'No such file or directory (ENOENT)' });
    expect((missing as ExecError).hint).toBeTruthy();
    const notExecutable = join(dir, 'not-executable');
    writeFileSync(notExecutable, '#!/bin/sh\nexit 0\n', { mode: 0o644 });
    const denied = await exec.run(notExecutable, [], options()).catch((e: unknown) => e);
    expect(denied).toBeInstanceOf(ExecError);
    expect(denied).toMatchObject({ errno: 'EACCES', message: 'Permission denied (EACCES)' });
    const noCwd = await exec.run('/bin/true', [], options({ cwd: join(dir, 'no-such-dir') })).catch((e: unknown) => e);
    expect(noCwd).toMatchObject({ errno: 'ENOENT' });
    // The helper is fine after each of them.
    expect((await exec.run('/bin/true', [], options())).status).toBe(0);
  });

  it('runs in the given directory with exactly the given environment, argv[0] the path', async () => {
    const { exec } = newHelper();
    const cwd = mkdtempSync(join(dir, 'cwd-'));
    const o = options({ cwd, env: { ONLY: 'this', PATH: '/bin' } });
    const result = await exec.run('/usr/bin/env', [], o);
    expect(result.status).toBe(0);
    expect(o.read().stdout.split('\n').filter(Boolean).sort()).toEqual(['ONLY=this', 'PATH=/bin']);
    const o2 = options({ cwd });
    await exec.run('/bin/sh', ['-c', 'pwd; echo "$0"'], o2);
    expect(o2.read().stdout).toBe(`${realpathSync(cwd)}\n/bin/sh\n`);
  });

  it('captures stdout and stderr in 0600 files, truncating what was there; stdin is /dev/null', async () => {
    const { exec } = newHelper();
    const o = options();
    writeFileSync(o.stdoutPath, 'old content that is longer than the new\n');
    await exec.run('/bin/sh', ['-c', 'echo out; echo err >&2; cat; readlink /proc/$$/fd/0'], o);
    expect(o.read()).toEqual({ stdout: 'out\n/dev/null\n', stderr: 'err\n' });
    expect(statSync(o.stderrPath).mode & 0o777).toBe(0o600);
  });

  it('never writes a capture through a symlink', async () => {
    const { exec } = newHelper();
    const target = join(dir, 'symlink-target');
    writeFileSync(target, 'keep');
    const o = options();
    symlinkSync(target, o.stdoutPath);
    const error = await exec.run('/bin/echo', ['overwritten'], o).catch((e: unknown) => e);
    expect(error).toMatchObject({ errno: 'ELOOP', message: expect.stringMatching(/^cannot create the stdout file: /) });
    expect(readFileSync(target, 'utf8')).toBe('keep');
  });

  it('gives the program only fds 0-2, its own session and process group, no blocked or ignored signals', async () => {
    const { exec } = newHelper();
    const fds = options();
    await exec.run('/bin/sh', ['-c', 'ls /proc/$$/fd'], fds);
    expect(fds.read().stdout.split('\n').filter(Boolean)).toEqual(['0', '1', '2']);
    // Read by the program itself: a shell blocks all signals for a moment around each command it starts.
    const stat = options();
    const result = await exec.run('/bin/cat', ['/proc/self/stat'], stat);
    const fields = stat.read().stdout.split(') ')[1].split(' ');
    // pgrp and session are the program's own pid.
    expect(Number(fields[2])).toBe(result.pid);
    expect(Number(fields[3])).toBe(result.pid);
    const signals = options();
    await exec.run('/bin/grep', ['-E', '^Sig(Blk|Ign)', '/proc/self/status'], signals);
    const [blocked, ignored] = signals.read().stdout.trim().split('\n');
    expect(blocked).toBe('SigBlk:\t0000000000000000');
    // The helper ignores SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT and blocks SIGCHLD; none of it is passed on.
    // (glibc's posix_spawn leaves its own internal signals 32 and 33 ignored; programs never see those.)
    expect(BigInt(`0x${ignored.split('\t')[1]}`) & 0x7fffffffn).toBe(0n);
  });

  it('kills the whole process group on abort, grandchildren too', async () => {
    const { exec } = newHelper();
    const pidFile = join(dir, 'abort-grandchild.pid');
    const aborter = new AbortController();
    const running = exec.run('/bin/sh', withGrandchild(pidFile), options({ signal: aborter.signal }));
    await waitFor('the grandchild', () => existsSync(pidFile) && readFileSync(pidFile, 'utf8').endsWith('\n'));
    const grandchild = Number(readFileSync(pidFile, 'utf8'));
    expect(isRunning(grandchild)).toBe(true);
    aborter.abort();
    expect(await running).toMatchObject({ signal: 'SIGKILL', status: 137, timedOut: false });
    await waitFor('the grandchild to die', () => !isRunning(grandchild));
  });

  it('kills the process group at the timeout and says so', async () => {
    const { exec } = newHelper();
    const pidFile = join(dir, 'timeout-grandchild.pid');
    const before = Date.now();
    const result = await exec.run('/bin/sh', withGrandchild(pidFile), options({ timeoutMs: 500 }));
    expect(result).toMatchObject({ signal: 'SIGKILL', timedOut: true });
    expect(Date.now() - before).toBeLessThan(5000);
    await waitFor('the grandchild to die', () => !isRunning(Number(readFileSync(pidFile, 'utf8'))));
  });

  it('does not start a program for a signal already aborted', async () => {
    const { exec } = newHelper();
    const marker = join(dir, 'must-not-exist');
    const aborter = new AbortController();
    aborter.abort(new Error('gone'));
    await expect(exec.run('/bin/touch', [marker], options({ signal: aborter.signal }))).rejects.toThrow('gone');
    await sleep(100);
    expect(existsSync(marker)).toBe(false);
  });

  it('reports 50 concurrent runs each with its own status and output', async () => {
    const { exec } = newHelper();
    const runs = Array.from({ length: 50 }, (_, i) => {
      const o = options();
      // Different lengths, so they end in another order than they started.
      const result = exec.run('/bin/sh', ['-c', 'sleep "$1"; echo "run $2"; echo "err $2" >&2; exit "$2"', 'sh', `0.${(i * 7) % 10}`, String(i)], o);
      return { i, o, result };
    });
    for (const { i, o, result } of runs) {
      expect(await result).toMatchObject({ code: i, status: i });
      expect(o.read()).toEqual({ stdout: `run ${i}\n`, stderr: `err ${i}\n` });
    }
    expect(new Set(await Promise.all(runs.map((r) => r.result.then((x) => x.pid)))).size).toBe(50);
  });

  it('fails the runs of a helper killed mid-run with UNAVAILABLE, kills their compilers, and starts a new helper', async () => {
    const { exec, log } = newHelper();
    exec.start();
    const pids: number[] = [];
    const runs = [1, 2, 3].map(() => exec.run('/bin/sleep', ['300'], options({ onStarted: (pid) => pids.push(pid) })).catch((e: unknown) => e));
    await waitFor('three sleeps', () => pids.length === 3);
    const first = exec.helperPid!;
    process.kill(first, 'SIGKILL');
    for (const error of await Promise.all(runs)) {
      expect(error).toBeInstanceOf(JobRefused);
      expect(error).toMatchObject({ status: grpc.status.UNAVAILABLE, code: 'exec-helper-died' });
      expect((error as JobRefused).message).toMatch(/died \(killed by SIGKILL\)/);
      expect((error as JobRefused).hint).toMatch(/retried on another host/);
    }
    expect(log).toEqual([expect.stringMatching(new RegExp(`^ferry-worker-exec \\(pid ${first}\\) died: killed by SIGKILL; 3 running program\\(s\\) fail`))]);
    await waitFor('the orphaned sleeps to be killed', () => pids.every((pid) => !isRunning(pid)));
    // The next run starts a new helper.
    expect((await exec.run('/bin/sh', ['-c', 'exit 7'], options())).status).toBe(7);
    expect(exec.helperPid).toBeGreaterThan(1);
    expect(exec.helperPid).not.toBe(first);
    expect(exec.fallback).toBeUndefined();
  });

  it('keeps a reserve for stderr, so a compile that fills the disk can still say so', async (context) => {
    if (process.getuid?.() !== 0) {
      console.log('exec-helper.test.ts: the full-disk test needs root (it mounts a small tmpfs)');
      context.skip();
    }
    const { exec } = newHelper();
    const small = join(dir, 'small');
    mkdirSync(small);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', small]);
    try {
      const o = options({ cwd: small, stdoutPath: join(small, 'out'), stderrPath: join(small, 'err') });
      const result = await exec.run('/bin/sh', ['-c', 'cat /dev/zero > fill'], o);
      expect(result.status).not.toBe(0);
      expect(o.read().stderr).toMatch(/No space left on device/);
    } finally {
      execFileSync('umount', [small]);
    }
  });
});

describe('named pipes made by ferry-worker-exec', () => {
  it('makes a 0600 named pipe, accepts one already there, and refuses to replace another file', async () => {
    const { exec } = newHelper();
    const fifo = join(dir, 'assembly.s');
    await exec.makeFifo(fifo);
    const info = statSync(fifo);
    expect(info.isFIFO()).toBe(true);
    expect(info.mode & 0o777).toBe(0o600);
    await exec.makeFifo(fifo);
    expect(statSync(fifo).isFIFO()).toBe(true);
    const regular = join(dir, 'regular.s');
    writeFileSync(regular, 'kept');
    await expect(exec.makeFifo(regular)).rejects.toMatchObject({ errno: 'EEXIST' });
    expect(readFileSync(regular, 'utf8')).toBe('kept');
    await expect(exec.makeFifo(join(dir, 'no-such-dir', 'a.s'))).rejects.toMatchObject({ errno: 'ENOENT' });
  });

  it('carries what one program writes to another reading it, both started at once', async () => {
    const { exec } = newHelper();
    const fifo = join(dir, 'pipe-between.s');
    await exec.makeFifo(fifo);
    const reader = options();
    const reading = exec.run('/bin/cat', [fifo], reader);
    const written = await exec.run('/bin/sh', ['-c', `printf 'one\\ntwo\\n' > ${fifo}`], options());
    expect(written.status).toBe(0);
    expect((await reading).status).toBe(0);
    expect(reader.read().stdout).toBe('one\ntwo\n');
  });
});

describe('when ferry-worker-exec cannot be used', () => {
  it('falls back to child_process.spawn, saying so in one log line, and works the same', async () => {
    const { exec, log } = newHelper(join(dir, 'nowhere', 'ferry-worker-exec'));
    exec.start();
    expect(log).toHaveLength(1);
    expect(log[0]).toMatch(/^ferry-worker-exec \(.*nowhere\/ferry-worker-exec\) cannot be used: it is missing or not executable \(ENOENT\); compilers are started with Node's child_process\.spawn instead, which forks the whole worker for every job \(about 3 ms more/);
    expect(exec.fallback).toMatch(/ENOENT/);
    const o = options();
    expect(await exec.run('/bin/sh', ['-c', 'echo out; echo err >&2; exit 4'], o)).toMatchObject({ code: 4, status: 4 });
    expect(o.read()).toEqual({ stdout: 'out\n', stderr: 'err\n' });
    expect(await exec.run('/bin/sh', ['-c', 'kill -KILL $$'], options())).toMatchObject({ signal: 'SIGKILL', status: 137 });
    await expect(exec.run(join(dir, 'no-such-compiler'), [], options())).rejects.toMatchObject({ errno: 'ENOENT' });
    const pidFile = join(dir, 'fallback-grandchild.pid');
    const timedOut = await exec.run('/bin/sh', withGrandchild(pidFile), options({ timeoutMs: 500 }));
    expect(timedOut).toMatchObject({ signal: 'SIGKILL', timedOut: true });
    await waitFor('the grandchild to die', () => !isRunning(Number(readFileSync(pidFile, 'utf8'))));
    expect(exec.helperPid).toBeUndefined();
    // Named pipes only come from the helper: without it the caller is told, with ENOSYS, to do without.
    await expect(exec.makeFifo(join(dir, 'fallback.s'))).rejects.toMatchObject({ errno: 'ENOSYS' });
    expect(existsSync(join(dir, 'fallback.s'))).toBe(false);
    expect(log).toHaveLength(1);
  });

  it('spawns a job meant for a fork server, and says it was not forked', async () => {
    const { exec } = newHelper(join(dir, 'nowhere', 'ferry-worker-exec'));
    const o = options({ forkServer: join(dir, 'no-server.sock') });
    expect(await exec.run('/bin/sh', ['-c', 'echo ran; exit 3'], o)).toMatchObject({ status: 3, forked: false });
    expect(o.read().stdout).toBe('ran\n');
  });

  it.each([
    ['speaks another protocol', 'echo ready 99; exec cat > /dev/null', new RegExp(`cannot be used: it speaks protocol 99, this worker ${HELPER_PROTOCOL_VERSION}`)],
    ['exits at once', 'echo "broken build" >&2; exit 3', /cannot be used: exited with status 3: broken build;/],
  ])('falls back when the helper %s, running what was sent to it the other way', async (_what, script, reason) => {
    const fake = join(dir, `fake-helper-${runCount++}`);
    writeFileSync(fake, `#!/bin/sh\n${script}\n`, { mode: 0o755 });
    const { exec, log } = newHelper(fake);
    const o = options();
    // Sent before the helper said anything.
    expect(await exec.run('/bin/sh', ['-c', 'echo ran; exit 5'], o)).toMatchObject({ status: 5 });
    expect(o.read().stdout).toBe('ran\n');
    expect(log.filter((line) => /cannot be used/.test(line))).toEqual([expect.stringMatching(reason)]);
    expect(exec.fallback).toBeDefined();
  });
});

/** A fork server of /bin/sh (cli/native/fork-server.c serves any program with glibc's start-up). */
async function startShellServer(): Promise<{ socket: string; child: ChildProcess }> {
  const socket = join(dir, `sh-${runCount++}.sock`);
  const child = spawn('/bin/sh', [], { env: { LD_PRELOAD: FORK_SERVER_LIBRARY, FERRY_FORK_SERVER_SOCKET: socket }, stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no fork server of /bin/sh within 10 s (is ${FORK_SERVER_LIBRARY} built?)`)), 10_000);
    child.stdout!.once('data', (d: Buffer) => (d.toString() === 'ready\n' ? resolve() : reject(new Error(`fork server said ${d.toString()}`))));
    child.once('exit', (code) => reject(new Error(`fork server exited with ${code}`)));
  }).catch((err: unknown) => {
    child.kill('SIGKILL');
    throw err;
  });
  return { socket, child };
}

describe('jobs forked by a fork server', () => {
  const servers: ChildProcess[] = [];
  afterAll(() => {
    for (const server of servers) server.kill('SIGKILL');
  });
  const server = async () => {
    const started = await startShellServer();
    servers.push(started.child);
    return started;
  };
  /** The parent of a process, from /proc. */
  const parentOf = (pid: number) => Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[1]);

  it('reports codes, signals and output as a spawned job does, from a process of the server', async () => {
    const { socket, child } = await server();
    const { exec, log } = newHelper();
    const o = options({ forkServer: socket });
    let parent = 0;
    const result = await exec.run('/bin/sh', ['-c', 'echo out; echo err >&2; sleep 0.2; exit 4'], { ...o, onStarted: (pid) => (parent = parentOf(pid)) });
    expect(result).toMatchObject({ code: 4, signal: null, status: 4, forked: true });
    expect(parent).toBe(child.pid);
    expect(o.read()).toEqual({ stdout: 'out\n', stderr: 'err\n' });
    expect(await exec.run('/bin/sh', ['-c', 'kill -KILL $$'], options({ forkServer: socket }))).toMatchObject({ signal: 'SIGKILL', status: 137, forked: true });
    // The job's working directory and environment are the request's.
    const env = options({ forkServer: socket, env: { PATH: '/usr/bin:/bin', GREETING: 'hello' }, cwd: '/usr' });
    expect(await exec.run('/bin/sh', ['-c', 'echo "$GREETING from $(pwd)"'], env)).toMatchObject({ status: 0, forked: true });
    expect(env.read().stdout).toBe('hello from /usr\n');
    expect(log).toEqual([]);
  });

  it('kills a timed-out job with its whole process group', async () => {
    const { socket } = await server();
    const { exec } = newHelper();
    const pidFile = join(dir, `forked-grandchild-${runCount++}.pid`);
    const result = await exec.run('/bin/sh', withGrandchild(pidFile), options({ forkServer: socket, timeoutMs: 500 }));
    expect(result).toMatchObject({ signal: 'SIGKILL', timedOut: true, forked: true });
    await waitFor('the grandchild to die', () => !isRunning(Number(readFileSync(pidFile, 'utf8'))));
  });

  it('ends a job as killed when its server dies, and the job with it', async () => {
    const { socket, child } = await server();
    const { exec } = newHelper();
    let jobPid = 0;
    const run = exec.run('/bin/sh', ['-c', 'sleep 300'], options({ forkServer: socket, onStarted: (pid) => (jobPid = pid) }));
    await waitFor('the job to start', () => jobPid > 0);
    child.kill('SIGKILL');
    expect(await run).toMatchObject({ signal: 'SIGKILL', forked: true });
    await waitFor('the job to die with its server', () => !isRunning(jobPid));
  });

  it('fails a forked job whose capture file cannot be made as an exec would fail, blaming no server', async () => {
    const { socket } = await server();
    const { exec, log } = newHelper();
    const o = options({ forkServer: socket, stdoutPath: join(dir, 'no-such-dir', 'x.stdout') });
    await expect(exec.run('/bin/sh', ['-c', 'exit 0'], o)).rejects.toMatchObject({ errno: 'ENOENT', message: expect.stringMatching(/cannot create the stdout file/) });
    expect(log).toEqual([]);
  });

  it('execs a job whose server cannot be reached, saying so once', async () => {
    const { exec, log } = newHelper();
    const gone = join(dir, 'no-server.sock');
    const o = options({ forkServer: gone });
    expect(await exec.run('/bin/sh', ['-c', 'echo ran; exit 3'], o)).toMatchObject({ status: 3, forked: false });
    expect(o.read().stdout).toBe('ran\n');
    expect(await exec.run('/bin/sh', ['-c', 'exit 0'], options({ forkServer: gone }))).toMatchObject({ status: 0, forked: false });
    expect(log).toEqual([expect.stringMatching(/^the fork server of \/bin\/sh \(.*no-server\.sock\) could not take a job: cannot reach the fork server: No such file or directory \(ENOENT\); such jobs are exec'd/)]);
  });
});

/** The helper binary spoken to directly: what ExecHelper never sends. */
describe('the ferry-worker-exec protocol', () => {
  function startRaw(): { child: ChildProcess; line: () => Promise<string>; exited: Promise<number | null>; stderr: () => string } {
    const child = spawn(HELPER, [], { stdio: ['pipe', 'pipe', 'pipe'] });
    const lines: string[] = [];
    let wake: (() => void) | undefined;
    let pending = '';
    let stderr = '';
    child.stdout!.on('data', (data: Buffer) => {
      pending += data.toString();
      const parts = pending.split('\n');
      pending = parts.pop()!;
      lines.push(...parts);
      wake?.();
    });
    child.stderr!.on('data', (data: Buffer) => (stderr += data.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const line = async () => {
      const deadline = Date.now() + 10_000;
      while (lines.length === 0) {
        if (Date.now() > deadline) throw new Error('no reply within 10 s');
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 100);
        });
      }
      return lines.shift()!;
    };
    return { child, line, exited, stderr: () => stderr };
  }
  const request = (id: number, path: string, args: string[] = []) =>
    encodeRequest(id, { path, args, cwd: dir, env: {}, stdoutPath: join(dir, `raw-${id}.out`), stderrPath: join(dir, `raw-${id}.err`) });

  it('refuses a request over 4 MiB and serves the next one', async () => {
    const raw = startRaw();
    expect(await raw.line()).toBe(`ready ${HELPER_PROTOCOL_VERSION}`);
    const size = (4 << 20) + 1;
    raw.child.stdin!.write(`1 ${size}\n`);
    raw.child.stdin!.write(Buffer.alloc(size, 'x'));
    raw.child.stdin!.write(request(2, '/bin/true'));
    expect(await raw.line()).toBe(`failed 1 7 request of ${size} bytes is over the limit of ${4 << 20} bytes`);
    expect(await raw.line()).toMatch(/^started 2 \d+$/);
    expect(await raw.line()).toBe('exited 2 0');
    raw.child.stdin!.end();
    expect(await raw.exited).toBe(0);
  });

  /** NUL-terminated fields, then `tail` as is. */
  const fields = (values: string[], tail = '') => Buffer.from(values.map((v) => `${v}\x00`).join('') + tail);
  const paths = ['spawn', '/bin/true', '/', join(tmpdir(), 'ferry-raw-never.out'), join(tmpdir(), 'ferry-raw-never.err')];

  it.each([
    ['no fields', () => Buffer.alloc(0)],
    ['a field without its NUL', () => Buffer.from('/bin/true')],
    ['too few fields', () => fields(paths)],
    ['an argc that is not a number', () => fields([...paths, 'x', 'true', '0'])],
    ['no argv[0]', () => fields([...paths, '0', '0'])],
    ['fewer env entries than envc', () => fields([...paths, '1', 'true', '2', 'A=1'])],
    ['bytes after the last field', () => fields([...paths, '1', 'true', '0'], 'extra')],
    ['no kind', () => fields(paths.slice(1))],
    ['an unknown kind', () => fields(['exec', ...paths.slice(1), '1', 'true', '0'])],
    ['a fifo without its path', () => fields(['fifo'])],
    ['a fifo with a relative path', () => fields(['fifo', 'assembly.s'])],
    ['a fifo with a second path', () => fields(['fifo', join(tmpdir(), 'ferry-raw-never.s'), 'x'])],
    ['a fork without its socket', () => fields(['fork'])],
    ['a fork without the fields after its socket', () => fields(['fork', join(tmpdir(), 'ferry-raw-never.sock'), ...paths.slice(1)])],
  ])('answers a request with %s as malformed and goes on', async (_what, makeBody) => {
    const body = makeBody();
    const raw = startRaw();
    expect(await raw.line()).toBe(`ready ${HELPER_PROTOCOL_VERSION}`);
    raw.child.stdin!.write(Buffer.concat([Buffer.from(`5 ${body.length}\n`), body]));
    raw.child.stdin!.write(request(6, '/bin/true'));
    expect(await raw.line()).toMatch(/^failed 5 22 malformed request/);
    expect(await raw.line()).toMatch(/^started 6 \d+$/);
    expect(await raw.line()).toBe('exited 6 0');
    raw.child.stdin!.end();
    expect(await raw.exited).toBe(0);
  });

  it('answers a fork request its server cannot take with "unforked", one whose capture file cannot be made with "failed"', async () => {
    const raw = startRaw();
    expect(await raw.line()).toBe(`ready ${HELPER_PROTOCOL_VERSION}`);
    const fork = (id: number, socket: string, out: string) => encodeRequest(id, { path: '/bin/true', args: [], cwd: dir, env: {}, stdoutPath: out, stderrPath: join(dir, `raw-${id}.err`), forkServer: socket });
    raw.child.stdin!.write(fork(7, join(dir, 'no-server.sock'), join(dir, 'raw-7.out')));
    expect(await raw.line()).toBe('unforked 7 2 cannot reach the fork server: No such file or directory');
    raw.child.stdin!.write(fork(8, join(dir, 'no-server.sock'), join(dir, 'no-such-dir', 'raw-8.out')));
    expect(await raw.line()).toBe('failed 8 2 cannot create the stdout file: No such file or directory');
    raw.child.stdin!.end();
    expect(await raw.exited).toBe(0);
  });

  it('exits with a message on a header it cannot frame', async () => {
    const raw = startRaw();
    expect(await raw.line()).toBe(`ready ${HELPER_PROTOCOL_VERSION}`);
    raw.child.stdin!.write('not a header\n');
    expect(await raw.exited).toBe(2);
    expect(raw.stderr()).toMatch(/^ferry-worker-exec: malformed request header "not a header"/);
  });

  it('exits at EOF at once, leaving running programs to the worker', async () => {
    const raw = startRaw();
    expect(await raw.line()).toBe(`ready ${HELPER_PROTOCOL_VERSION}`);
    raw.child.stdin!.write(request(1, '/bin/sleep', ['300']));
    const pid = Number(/^started 1 (\d+)$/.exec(await raw.line())![1]);
    raw.child.stdin!.end();
    expect(await raw.exited).toBe(0);
    expect(isRunning(pid)).toBe(true);
    process.kill(-pid, 'SIGKILL');
    await waitFor('the sleep to die', () => !isRunning(pid));
  });
});

describe('the worker', () => {
  let worker: Started;
  const socket = () => join(dir, 'w.sock');

  beforeAll(async () => {
    const tmp = join(dir, 'worker-tmp');
    mkdirSync(tmp);
    worker = await startProcess(process.execPath, [WORKER_MAIN, '--listen', `unix:${socket()}`, '--slots', '2', '--allow', 'gcc', '--tmpdir', tmp], /listening on/);
  });

  afterAll(async () => {
    await worker?.stop();
  });

  /** The worker's ferry-worker-exec child, if any. */
  function helperChild(): number | undefined {
    const pid = worker.child.pid!;
    const children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(' ').filter(Boolean).map(Number);
    return children.find((child) => readFileSync(`/proc/${child}/comm`, 'utf8').trim() === 'ferry-worker-ex');
  }

  async function compile(): Promise<number> {
    const proto = loadWorkerProto();
    const client = new proto.ferry.v1.Worker(`unix://${socket()}`, grpc.credentials.createInsecure());
    try {
      const source = Buffer.from('# 1 "x.c"\nint x = 1;\n');
      const gccVersion = execFileSync('gcc', ['--version'], { encoding: 'utf8' }).split('\n')[0];
      const outcome = await compileOnce(
        client,
        { jobId: 'exec', compiler: 'gcc', compilerVersion: gccVersion, args: ['-O2', '-c'], language: 'C', outputs: [{ kind: 'OBJECT', name: 'x.o' }], sourceSize: source.length, sourceName: 'x.c' },
        source,
        { deadlineMs: 30_000 },
      );
      expect(outcome.outputs[0].length).toBeGreaterThan(0);
      return outcome.result.exitCode;
    } finally {
      client.close();
    }
  }

  it('starts ferry-worker-exec when it starts, compiles through it, and logs no fallback', async () => {
    expect(helperChild()).toBeGreaterThan(1);
    expect(await compile()).toBe(0);
    expect(worker.output()).not.toMatch(/cannot be used/);
    // Nothing of the capture files is left behind in the (kept, emptied) job directory.
    await waitFor('the job directory to be emptied', () => leftoverFiles(join(dir, 'worker-tmp')).length === 0);
  });

  it('logs a helper that dies, and starts a new one for the next job', async () => {
    const first = helperChild()!;
    process.kill(first, 'SIGKILL');
    await waitFor('the death to be logged', () => /ferry-worker-exec \(pid \d+\) died: killed by SIGKILL/.test(worker.output()));
    expect(await compile()).toBe(0);
    const second = helperChild();
    expect(second).toBeGreaterThan(1);
    expect(second).not.toBe(first);
  });
});
