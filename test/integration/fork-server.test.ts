/**
 * The preprocessors' fork servers (cli/native/fork-server.c, coordinator/fork-server.ts) with the
 * real launcher and real cc1/cc1plus: a job run by a forked copy must write what the same command
 * exec'd writes (output, .d file and its mode, messages, exit status) with the job's environment,
 * working directory and umask; a launcher that goes away takes its job along; a server that dies
 * mid-job gives a failure the coordinator repeats, and is started again.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadLauncherCodec } from '../../proto/load';
import type { PreprocessResult__Output } from '../../proto/generated/ferry/launcher/v1/PreprocessResult';
import { parseDriverOutput } from '../../coordinator/driver-template';
import type { DriverCommand } from '../../proto/driver-commands';
import { ForkServers, forkServerFits } from '../../proto/fork-server';
import { ROOT } from '../support/processes';

const codec = loadLauncherCodec();
const LAUNCHER = join(ROOT, 'dist', 'bin', 'ferry');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let dir: string;
let runtime: string;
let servers: ForkServers;
const logs: string[] = [];
let coordinator: Server;
/** What the fake coordinator tells the next launcher, by the launcher's first argument after the compiler. */
const plans = new Map<string, { command: DriverCommand; output: string; forkServer: string }>();
const results = new Map<string, PreprocessResult__Output>();

function frame(body: Buffer): Buffer {
  const header = Buffer.alloc(4);
  header.writeUInt32LE(body.length);
  return Buffer.concat([header, body]);
}

/** Reads length-prefixed frames off a socket, one callback each. */
function onFrames(sock: Socket, each: (payload: Buffer, n: number) => void): void {
  let buf = Buffer.alloc(0);
  let n = 0;
  sock.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32LE(0)) {
      const len = buf.readUInt32LE(0);
      each(buf.subarray(4, 4 + len), n++);
      buf = buf.subarray(4 + len);
    }
  });
}

/** The cc1 command gcc's driver would run for `args` (its -### output), in `cwd`. */
function cc1Command(driver: string, args: string[], cwd: string): DriverCommand {
  const out = spawnSync(driver, [...args, '-###'], { cwd, encoding: 'utf8' });
  const command = parseDriverOutput(out.stderr);
  if (!command) throw new Error(`no single cc1 command in: ${out.stderr}`);
  return command;
}

/** Runs the launcher for a planned job; resolves with its PreprocessResult once it exited. */
function launch(key: string, opts: { env?: NodeJS.ProcessEnv; cwd?: string; umask?: number } = {}) {
  const child = spawn('sh', ['-c', `umask ${(opts.umask ?? 0o022).toString(8)}; exec "$0" gcc ${key}`, LAUNCHER], {
    cwd: opts.cwd ?? dir,
    env: { ...(opts.env ?? process.env), FERRY_RUNTIME_DIR: runtime },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const done = new Promise<{ code: number | null; result?: PreprocessResult__Output; stderr: string }>((resolve) => {
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, result: results.get(key), stderr }));
  });
  return { child, done };
}

/** The preprocessor's output, .d file and messages for `args` run one way: forked (a server) or exec'd (none). */
async function preprocessWith(args: string[], forkServer: string, opts: { env?: NodeJS.ProcessEnv; cwd?: string; umask?: number; driver?: string } = {}) {
  const cwd = opts.cwd ?? dir;
  const key = `job-${plans.size}`;
  const output = join(runtime, `${key}.i`);
  const command = cc1Command(opts.driver ?? 'gcc', args, cwd);
  plans.set(key, { command, output, forkServer });
  const { code, result } = await launch(key, opts).done;
  expect(code).toBe(0);
  const text = existsSync(output) ? readFileSync(output) : undefined;
  rmSync(output, { force: true });
  return { result: result!, text };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-fork-server-'));
  runtime = join(dir, 'runtime');
  mkdirSync(runtime, { mode: 0o700 });
  servers = new ForkServers(runtime, (line) => logs.push(line), join(ROOT, 'dist', 'lib', 'ferry-fork-server.so'), 'huge-pages');
  // A coordinator that only asks for the planned preprocessor, then says DONE.
  coordinator = createServer((sock) => {
    sock.on('error', () => undefined);
    let key = '';
    onFrames(sock, (payload, n) => {
      if (n === 0) {
        key = codec.decodeRequest(payload).argv[1];
        const plan = plans.get(key)!;
        sock.write(frame(codec.encodeReply({ action: 'PREPROCESS', preprocessArgv: plan.command.argv, env: plan.command.env, preprocessOutput: plan.output, forkServer: plan.forkServer })));
      } else {
        results.set(key, codec.decodePreprocessResult(payload));
        sock.end(frame(codec.encodeReply({ action: 'DONE', exitCode: 0 })));
      }
    });
  });
  await new Promise<void>((resolve) => coordinator.listen(join(runtime, 'coordinator.sock'), resolve));
});

afterAll(async () => {
  servers?.close();
  await new Promise((r) => coordinator?.close(r));
  rmSync(dir, { recursive: true, force: true });
});

/** A ready server for the program of `args`' cc1 (started on the first ask, bounded wait). */
async function serverFor(args: string[], driver = 'gcc'): Promise<string> {
  const program = cc1Command(driver, args, dir).argv[0];
  for (let i = 0; i < 200; i++) {
    const socket = servers.socketFor(program, process.env);
    if (socket) return socket;
    await sleep(25);
  }
  throw new Error(`no fork server for ${program}: ${logs.join('\n')}`);
}

describe('forkServerFits', () => {
  it.each([
    [{ PATH: '/usr/bin', CPATH: '/x' }, true],
    [{ LD_PRELOAD: '/x.so' }, false],
    [{ LD_LIBRARY_PATH: '/opt/lib' }, false],
    [{ GLIBC_TUNABLES: 'glibc.malloc.check=3' }, false],
    [{ MALLOC_ARENA_MAX: '2' }, false],
    [{ FERRY_FORK_SERVER: '0' }, false],
    [{ FERRY_FORK_SERVER: '1' }, true],
  ])('%j -> %s', (env, fits) => expect(forkServerFits(env)).toBe(fits));
});

describe('a job run by a fork server', () => {
  beforeAll(() => {
    mkdirSync(join(dir, 'src', 'inc'), { recursive: true });
    mkdirSync(join(dir, 'envinc'), { recursive: true });
    writeFileSync(join(dir, 'src', 'inc', 'local.h'), '#define LOCAL 7\n');
    writeFileSync(join(dir, 'envinc', 'fromenv.h'), '#define FROM_ENV 1\n');
    writeFileSync(join(dir, 'src', 'a.c'), '#include <stdio.h>\n#include "inc/local.h"\n#ifdef WANT_ENV\n#include <fromenv.h>\n#endif\nconst char *when = __DATE__ " " __TIME__;\nint a(void) { return LOCAL; }\n');
    writeFileSync(join(dir, 'src', 'broken.c'), '#include "missing.h"\nint b;\n');
    writeFileSync(join(dir, 'src', 'warn.c'), '#warning careful\nint w;\n');
    writeFileSync(join(dir, 'src', 'b.cc'), '#include <vector>\nstd::vector<int> v;\n');
    // System headers (their paths are canonicalized: the server's realpath) through a linked
    // directory, a linked header and a `..`.
    mkdirSync(join(dir, 'real-sys', 'sub'), { recursive: true });
    writeFileSync(join(dir, 'real-sys', 'one.h'), `#include "${'sub/../'.repeat(12)}two.h"\n#include <three.h>\n#include <missing-here.h>\nint one;\n`);
    writeFileSync(join(dir, 'real-sys', 'two.h'), 'int two;\n');
    writeFileSync(join(dir, 'real-sys', 'three-target.h'), 'int three;\n');
    mkdirSync(join(dir, 'other-sys'), { recursive: true });
    writeFileSync(join(dir, 'other-sys', 'missing-here.h'), 'int found_later;\n');
    symlinkSync('three-target.h', join(dir, 'real-sys', 'three.h'));
    symlinkSync('real-sys', join(dir, 'linked-sys'));
    writeFileSync(join(dir, 'src', 'sys.c'), '#include <one.h>\n#include <stdio.h>\nint main(void) { return one + two + three; }\n');
  });

  const cases: Array<[string, string[], { umask?: number; driver?: string }]> = [
    ['a plain C file', ['-O2', '-E', 'src/a.c'], {}],
    ['dependency output (-MD -MF), under umask 027', ['-O2', '-MD', '-MF', 'deps/a.d', '-E', 'src/a.c'], { umask: 0o027 }],
    ['an include path from CPATH (set below) and a pinned date (SOURCE_DATE_EPOCH)', ['-DWANT_ENV', '-E', 'src/a.c'], {}],
    ['a missing header (an error)', ['-E', 'src/broken.c'], {}],
    ['a #warning', ['-E', '-fdirectives-only', 'src/warn.c'], {}],
    ['C++ (cc1plus)', ['-O2', '-E', '-fdirectives-only', 'src/b.cc'], { driver: 'g++' }],
    ['system headers through links and `..`, one found in a later directory', ['-isystem', 'linked-sys', '-isystem', 'other-sys', '-E', 'src/sys.c'], {}],
  ];

  it.each(cases)('%s: the same output, messages and status as exec', async (_name, args, opts) => {
    mkdirSync(join(dir, 'deps'), { recursive: true });
    const env: NodeJS.ProcessEnv = { ...process.env, SOURCE_DATE_EPOCH: '1700000000' };
    if (args.includes('-DWANT_ENV')) env.CPATH = join(dir, 'envinc');
    const socket = await serverFor(args, opts.driver);
    const forked = await preprocessWith(args, socket, { ...opts, env });
    const depsForked = existsSync(join(dir, 'deps', 'a.d')) ? { text: readFileSync(join(dir, 'deps', 'a.d')), mode: statSync(join(dir, 'deps', 'a.d')).mode } : undefined;
    rmSync(join(dir, 'deps', 'a.d'), { force: true });
    const exec = await preprocessWith(args, '', { ...opts, env });
    const depsExec = existsSync(join(dir, 'deps', 'a.d')) ? { text: readFileSync(join(dir, 'deps', 'a.d')), mode: statSync(join(dir, 'deps', 'a.d')).mode } : undefined;
    rmSync(join(dir, 'deps', 'a.d'), { force: true });

    expect(forked.result.forkServer).toBe(true);
    expect(exec.result.forkServer).toBe(false);
    expect(forked.result.exitCode).toBe(exec.result.exitCode);
    expect(Buffer.from(forked.result.stderr).toString()).toBe(Buffer.from(exec.result.stderr).toString());
    expect(forked.text?.equals(exec.text!)).toBe(true);
    expect(depsForked).toEqual(depsExec);
    if (args.includes('-MD')) expect(depsForked!.mode & 0o777).toBe(0o640);
    if (args.includes('-DWANT_ENV')) expect(forked.text!.toString()).toMatch(/fromenv\.h/);
    if (args.includes('src/a.c')) expect(forked.text!.toString()).toContain('"Nov 14 2023" " " "22:13:20"');
    if (args.includes('src/broken.c')) expect(forked.result.exitCode).toBe(1);
    if (args.includes('src/sys.c')) {
      // gcc names a system header by its canonical path where that is shorter: (sub/..)*12/two.h in
      // the linked directory by the real one's absolute path, as an exec'd cc1 does.
      expect(forked.text!.toString()).toContain(`# 1 "${join(realpathSync(dir), 'real-sys', 'two.h')}" 1 3 4`);
      expect(forked.text!.toString()).toContain('# 1 "other-sys/missing-here.h" 1 3 4');
    }
  });

  it('runs many jobs at once', async () => {
    const args = ['-O2', '-E', 'src/a.c'];
    const socket = await serverFor(args);
    // a.c has __DATE__ and __TIME__: pinned, or the runs differ by the second they ran in.
    const env = { ...process.env, SOURCE_DATE_EPOCH: '1700000000' };
    const reference = await preprocessWith(args, '', { env });
    const runs = await Promise.all(Array.from({ length: 24 }, () => preprocessWith(args, socket, { env })));
    for (const run of runs) {
      expect(run.result.forkServer).toBe(true);
      expect(run.text!.equals(reference.text!)).toBe(true);
    }
  });

  /** A job that blocks: its source includes a FIFO nobody writes. */
  function blockingJob(socket: string) {
    const fifo = join(dir, 'src', 'blocked.h');
    if (!existsSync(fifo)) execFileSync('mkfifo', [fifo]);
    writeFileSync(join(dir, 'src', 'blocks.c'), '#include "blocked.h"\n');
    const key = `job-${plans.size}`;
    plans.set(key, { command: cc1Command('gcc', ['-E', 'src/blocks.c'], dir), output: join(runtime, `${key}.i`), forkServer: socket });
    return launch(key);
  }
  /** The fork server's children: the jobs it runs. */
  const jobsOf = (serverPid: number) => {
    const out = spawnSync('pgrep', ['-P', String(serverPid)], { encoding: 'utf8' }).stdout.trim();
    return out ? out.split('\n').map(Number) : [];
  };
  /** The fork server running a job: a cc1 child of this process (the test's ForkServers started it) with a child of its own. */
  const serverPid = () => {
    const children = spawnSync('pgrep', ['-P', String(process.pid)], { encoding: 'utf8' }).stdout.trim().split('\n').map(Number);
    const found = children.find((pid) => existsSync(`/proc/${pid}/comm`) && readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'cc1' && jobsOf(pid).length > 0);
    if (!found) throw new Error('no fork server with a job');
    return found;
  };
  async function until(what: string, check: () => boolean) {
    for (let i = 0; i < 200; i++) {
      if (check()) return;
      await sleep(25);
    }
    throw new Error(`timed out waiting for ${what}`);
  }

  /** Whether a job is blocked opening the FIFO (and so has set itself up: heap, death signal). */
  const blockedOnFifo = (jobPid: number) => {
    try {
      return /wait_for_partner|fifo_open/.test(readFileSync(`/proc/${jobPid}/wchan`, 'utf8'));
    } catch {
      return false;
    }
  };

  /** The server with a job blocked on the FIFO, and that job: the pids. */
  async function blockedJobIn(): Promise<{ pid: number; jobPid: number }> {
    let found = { pid: 0, jobPid: 0 };
    await until('the job to block in the server', () => {
      try {
        const pid = serverPid();
        const jobPid = jobsOf(pid).find(blockedOnFifo);
        if (jobPid) found = { pid, jobPid };
        return jobPid !== undefined;
      } catch {
        return false;
      }
    });
    return found;
  }

  /** A blocking job, once the server runs it and it blocks, and the server's pid. */
  async function runningBlockingJob() {
    const job = blockingJob(await serverFor(['-E', 'src/blocks.c']));
    const { pid } = await blockedJobIn();
    return { job, pid };
  }

  /** The job's anonymous mappings that asked for huge pages (VmFlags "hg"), as [start, end] addresses. */
  function hugePageMappings(jobPid: number): Array<[bigint, bigint]> {
    const found: Array<[bigint, bigint]> = [];
    let range: [bigint, bigint] | undefined;
    for (const line of readFileSync(`/proc/${jobPid}/smaps`, 'utf8').split('\n')) {
      const head = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
      if (head) range = [BigInt(`0x${head[1]}`), BigInt(`0x${head[2]}`)];
      else if (line.startsWith('VmFlags:') && line.split(/\s+/).includes('hg') && range) found.push(range);
    }
    return found;
  }

  it.skipIf(!existsSync('/sys/kernel/mm/transparent_hugepage'))("gives a job's garbage-collected heap huge pages, aligned to them", async () => {
    const { job, pid } = await runningBlockingJob();
    try {
      const [jobPid] = jobsOf(pid);
      // Blocked on its include, cc1 has set up its builtins: its first 2 MiB heap chunk is mapped.
      const mappings = hugePageMappings(jobPid);
      const twoMiB = 2n << 20n;
      expect(mappings.length).toBeGreaterThan(0);
      for (const [start, end] of mappings) {
        expect(start % twoMiB).toBe(0n);
        expect((end - start) % twoMiB).toBe(0n);
      }
      // The server itself asks for nothing: the advice is for the jobs' mappings.
      expect(hugePageMappings(pid)).toEqual([]);
    } finally {
      job.child.kill('SIGKILL');
      await job.done;
      await until('the job to be gone', () => jobsOf(pid).length === 0);
    }
  });

  it("makes the pages of a job's heap chunks at once for a server asked to populate them (the worker's compiles)", async () => {
    const populating = new ForkServers(join(runtime, 'p'), (line) => logs.push(line), join(ROOT, 'dist', 'lib', 'ferry-fork-server.so'), 'populate');
    mkdirSync(join(runtime, 'p'), { mode: 0o700, recursive: true });
    try {
      let socket: string | undefined;
      const program = cc1Command('gcc', ['-E', 'src/blocks.c'], dir).argv[0];
      for (let i = 0; i < 200 && !(socket = populating.socketFor(program, process.env)); i++) await sleep(25);
      const job = blockingJob(socket!);
      try {
        // The only server with a job now is this one.
        const { jobPid } = await blockedJobIn();
        // Its 2 MiB heap chunk is resident in full (exec'd, cc1 has touched ~1.6 MiB of it by now),
        // and asks for no huge pages.
        const smaps = readFileSync(`/proc/${jobPid}/smaps`, 'utf8').split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/);
        const chunks = smaps.filter((m) => /^Size:\s+2048 kB$/m.test(m) && /^Rss:\s+2048 kB$/m.test(m) && !/\//.test(m.split('\n')[0]));
        expect(chunks.length).toBeGreaterThan(0);
        expect(hugePageMappings(jobPid)).toEqual([]);
      } finally {
        job.child.kill('SIGKILL');
        await job.done;
      }
    } finally {
      populating.close();
    }
  });

  it('kills the job of a launcher that went away', async () => {
    const { job, pid } = await runningBlockingJob();
    job.child.kill('SIGKILL');
    await job.done;
    await until('the job to be gone', () => jobsOf(pid).length === 0);
    expect(jobsOf(pid)).toEqual([]);
  });

  it('gives a failure the coordinator repeats when the server dies mid-job, and starts a new server', async () => {
    const { job, pid } = await runningBlockingJob();
    const jobs = jobsOf(pid);
    process.kill(pid, 'SIGKILL');
    const { result } = await job.done;
    expect(result!.exitCode).toBe(127);
    expect(Buffer.from(result!.stderr).toString()).toMatch(/the preprocessor's fork server went away/);
    // Its job died with it (no cc1 left blocked on the FIFO).
    await until('the orphaned job to end', () => jobs.every((p) => !existsSync(`/proc/${p}`)));
    await until('the coordinator to notice', () => logs.some((l) => /fork server for .*cc1: killed by SIGKILL; its jobs are exec'd again/.test(l)));
    // After the retry delay a new server takes jobs again.
    await sleep(1100);
    const again = await serverFor(['-E', 'src/a.c']);
    const run = await preprocessWith(['-E', 'src/a.c'], again);
    expect(run.result.forkServer).toBe(true);
  });

  it('has the launcher run the command itself when no server answers', async () => {
    const run = await preprocessWith(['-E', 'src/a.c'], join(runtime, 'no-such-server.sock'));
    expect(run.result.forkServer).toBe(false);
    expect(run.result.exitCode).toBe(0);
    expect(run.text!.toString()).toContain('int a(void)');
  });
});
