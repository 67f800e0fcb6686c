/**
 * What goes wrong on real networks, with real processes in the network-namespace cluster: workers
 * killed mid-job, SSH connections cut, hosts that refuse, hang or have no worker, full disks,
 * missing compilers, a coordinator killed mid-build, and a bounded load test. Every build must end
 * with every object identical to a local build, and nothing truncated or stale.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { expectSameBuild } from '../support/builds';
import { clusterSupport, startCluster, type Cluster, type Remote, type Spawned } from '../support/cluster';
import { CLI_MAIN, LAUNCHER, ROOT, run, WORKER_MAIN } from '../support/processes';

const support = clusterSupport();
const FIXTURES = join(ROOT, 'test', 'fixtures');
const workerCommand = () => [process.execPath, WORKER_MAIN, '--listen', '127.0.0.1:3633', '--allow', 'gcc,g++'];

/** Bounded wait for a condition checked every 100 ms. */
async function waitFor<T>(what: string, check: () => Promise<T | undefined> | T | undefined, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

describe.skipIf(!support.ok)('faults', () => {
  let cluster: Cluster;
  let work: string;
  const workers = new Map<string, Spawned>();
  let coordinatorEnvs: NodeJS.ProcessEnv[] = [];

  function ferryEnv(hosts: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    const base = mkdtempSync(join(work, 'ferry-'));
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...cluster.env(),
      FERRY_RUNTIME_DIR: join(base, 'run'),
      FERRY_STATE_DIR: join(base, 'state'),
      FERRY_HOSTS: hosts,
      ...extra,
    };
    delete env.NODE_EXTRA_CA_CERTS;
    coordinatorEnvs.push(env);
    return env;
  }

  const cli = async (env: NodeJS.ProcessEnv, ...args: string[]) => {
    const result = await run(process.execPath, [CLI_MAIN, ...args], { env });
    expect(result.code, result.stderr).toBe(0);
    return JSON.parse(result.stdout);
  };
  const stats = (env: NodeJS.ProcessEnv) => cli(env, 'stats', '--json');
  const zeroStats = (env: NodeJS.ProcessEnv) => run(process.execPath, [CLI_MAIN, 'stats', '--zero'], { env });
  const status = (env: NodeJS.ProcessEnv) => cli(env, 'status', '--json');
  const jobsOn = (name: string) => (workers.get(name)?.output() ?? '').split('\n').filter((l) => /^job \S+ .*exit \d+/.test(l)).length;

  async function restartWorker(remote: Remote, args: string[] = ['--slots', '2']): Promise<Spawned> {
    await remote.stopWorker('SIGKILL');
    const worker = await remote.startWorker(args);
    workers.set(remote.name, worker);
    return worker;
  }

  /** The pid of a remote's listening sshd, and those of its per-connection children. */
  function sshdPids(remote: Remote): { listener: number; sessions: number[] } {
    const listener = Number(execFileSync('pgrep', ['-f', `${remote.dir}/sshd_config`], { encoding: 'utf8' }).trim().split('\n')[0]);
    let sessions: number[] = [];
    try {
      sessions = execFileSync('pgrep', ['-P', String(listener)], { encoding: 'utf8' }).trim().split('\n').filter(Boolean).map(Number);
    } catch {
      sessions = []; // pgrep exits 1 when there is no child.
    }
    return { listener, sessions };
  }

  /** Starts a slow compile through Ferry and waits until a host runs it; returns that host and the result to come. */
  async function slowJobInFlight(env: NodeJS.ProcessEnv) {
    const result = run(LAUNCHER, ['gcc', '-O2', '-c', 'slow.c', '-o', 'slow-remote.o'], { cwd: work, env, timeoutMs: 120_000 });
    const host = await waitFor('the slow job to start on a host', async () => {
      const s = await status(env);
      return s.running ? s.hostStatus.find((h: { running: unknown[] }) => h.running.length > 0)?.name : undefined;
    });
    return { host: host as string, result };
  }

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'ferry-faults-'));
    cluster = await startCluster({ remotes: 2, worker: { command: workerCommand, readyPattern: /listening on/ } });
    for (const remote of cluster.remotes) workers.set(remote.name, await remote.startWorker(['--slots', '2']));
    // About three seconds of -O2 work: long enough to be cut in the middle.
    const functions = Array.from({ length: 1500 }, (_, i) => `int f${i}(int x){ for(int i=0;i<x;i++) x ^= i*${i} + (x>>3); return x*${i}; }`);
    writeFileSync(join(work, 'slow.c'), `${functions.join('\n')}\n`);
    execFileSync('gcc', ['-O2', '-c', 'slow.c', '-o', 'slow-local.o'], { cwd: work });
    writeFileSync(join(work, 'quick.c'), '#include <string.h>\nint quick(const char *s) { return (int)strlen(s); }\n');
    execFileSync('gcc', ['-O2', '-c', 'quick.c', '-o', 'quick-local.o'], { cwd: work });
  }, 120_000);

  afterEach(async () => {
    for (const env of coordinatorEnvs) if (existsSync(join(env.FERRY_RUNTIME_DIR!, 'control.sock'))) await run(process.execPath, [CLI_MAIN, 'stop'], { env });
    coordinatorEnvs = [];
  });

  afterAll(async () => {
    await cluster?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  /**
   * An environment whose coordinator is connected to r2 alone, then told about r1 as well: the next
   * job finds r2 up and r1 still connecting, so it goes to r2 (and, when r2 fails it, to r1).
   */
  async function r2First(): Promise<NodeJS.ProcessEnv> {
    const env = ferryEnv('r2/2');
    await quickJobs(env, 1, `r2first-${Date.now()}`);
    env.FERRY_HOSTS = 'r2/2 r1/2';
    return env;
  }

  /** The slow job that `host` failed finished elsewhere, identical to the local object; returns the stats. */
  async function expectRetriedElsewhere(env: NodeJS.ProcessEnv, host: string, result: Promise<{ code: number; stderr: string }>) {
    const done = await result;
    expect(done.code, done.stderr).toBe(0);
    expect(readFileSync(join(work, 'slow-remote.o')).equals(readFileSync(join(work, 'slow-local.o')))).toBe(true);
    const s = await stats(env);
    expect(s.jobs.retried).toBe(1);
    expect(s.hosts[host].failures).toBe(1);
    return s;
  }

  /** After its backoff a host that came back gets jobs again: quick jobs until its worker logs more. */
  async function expectUsedAgain(env: NodeJS.ProcessEnv, host: string, before = 0) {
    await waitFor(`${host} to take jobs again`, async () => {
      await quickJobs(env, 2, `${host}-back-${Date.now()}`);
      return jobsOn(host) > before || undefined;
    });
    expect((await status(env)).hostStatus.find((h: { name: string }) => h.name === host).state).toBe('up');
  }

  /** Compiles quick.c through Ferry `n` times (distinct outputs); each must equal the local object. */
  async function quickJobs(env: NodeJS.ProcessEnv, n: number, tag: string) {
    for (let i = 0; i < n; i++) {
      const out = `quick-${tag}-${i}.o`;
      const result = await run(LAUNCHER, ['gcc', '-O2', '-c', 'quick.c', '-o', out], { cwd: work, env });
      expect(result.code, result.stderr).toBe(0);
      expect(readFileSync(join(work, out)).equals(readFileSync(join(work, 'quick-local.o'))), out).toBe(true);
    }
  }

  it('a worker killed with SIGKILL mid-job: the job is retried on the other host, identical; the host is used again once back', async () => {
    const env = ferryEnv('r1/2 r2/2');
    const { host, result } = await slowJobInFlight(env);
    await cluster.remote(host).stopWorker('SIGKILL');
    workers.delete(host);
    const s = await expectRetriedElsewhere(env, host, result);
    expect(s.hosts[host].retried).toBe(1);
    expect(s.jobs.remote).toBe(1);
    expect(s.jobs.local).toBe(0);

    const back = await cluster.remote(host).startWorker(['--slots', '2']);
    workers.set(host, back);
    // Down hosts are tried again after a backoff (first 1 s).
    await expectUsedAgain(env, host);
  });

  it('the SSH connection drops mid-job: the job is retried, the coordinator reconnects', async () => {
    const env = ferryEnv('r1/2 r2/2');
    const { host, result } = await slowJobInFlight(env);
    const before = jobsOn(host);
    for (const pid of sshdPids(cluster.remote(host)).sessions) process.kill(pid, 'SIGKILL');
    await expectRetriedElsewhere(env, host, result);
    const down = (await status(env)).hostStatus.find((h: { name: string }) => h.name === host);
    expect(down.lastError === '' || /SSH connection|closed|load stream/.test(down.lastError)).toBe(true);
    // The worker itself kept running (its job was cancelled with the connection); after the backoff
    // the coordinator connects again and sends it jobs.
    await expectUsedAgain(env, host, before);
  });

  it.each([
    ['refuses SSH (sshd stopped)', /refused|ECONNREFUSED|connect/i],
    ['has no worker running', /no worker answered/],
    ['does not answer (sshd frozen)', /no SSH handshake within/],
  ])('a host that %s is marked down; the other keeps working; it is used again when it returns', async (what, reason) => {
    const r2 = cluster.remote('r2');
    let config: string | undefined;
    if (what.startsWith('refuses')) await r2.stopSshd();
    if (what.startsWith('has no worker')) {
      await r2.stopWorker('SIGTERM');
      workers.delete('r2');
    }
    if (what.startsWith('does not answer')) {
      process.kill(sshdPids(r2).listener, 'SIGSTOP');
      config = join(work, 'ssh_config_timeout');
      writeFileSync(config, `Host r2\n  ConnectTimeout 2\n\n${readFileSync(cluster.sshConfigPath, 'utf8')}`);
    }
    try {
      const env = ferryEnv('r2/2 r1/2', config ? { FERRY_SSH_CONFIG: config } : {});
      const onR1 = jobsOn('r1');
      await quickJobs(env, 3, `down-${what.length}`);
      expect(jobsOn('r1')).toBe(onR1 + 3);
      const s = await stats(env);
      expect(s.jobs.remote).toBe(3);
      expect(s.jobs.local).toBe(0);
      // A frozen sshd takes its ConnectTimeout to be given up on; the jobs did not wait for it.
      const r2Status = await waitFor('r2 marked down', async () =>
        (await status(env)).hostStatus.find((h: { name: string; state: string }) => h.name === 'r2' && h.state === 'down'),
      );
      expect(r2Status.lastError).toMatch(reason);
    } finally {
      if (what.startsWith('refuses')) await r2.startSshd();
      if (what.startsWith('has no worker')) workers.set('r2', await r2.startWorker(['--slots', '2']));
      if (what.startsWith('does not answer')) process.kill(sshdPids(r2).listener, 'SIGCONT');
    }
    if (what.startsWith('refuses')) {
      // Back: after the backoff the next jobs reach r2 again.
      const env = coordinatorEnvs[coordinatorEnvs.length - 1];
      await expectUsedAgain(env, 'r2', jobsOn('r2'));
    }
  });

  it('a worker whose disk is full: a clear error, and the job goes to the other host', async () => {
    const r2 = cluster.remote('r2');
    const small = join(work, 'small-tmp');
    mkdirSync(small, { recursive: true });
    // Room for a small job (the warm-up), not for a C++ file with iostream.
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=512k', 'tmpfs', small]);
    try {
      await restartWorker(r2, ['--slots', '2', '--tmpdir', small]);
      const env = await r2First();
      await zeroStats(env);
      writeFileSync(join(work, 'big.cc'), '#include <iostream>\n#include <map>\n#include <string>\nint count(const std::map<std::string, int> &m) { std::cout << m.size(); return (int)m.size(); }\n');
      execFileSync('g++', ['-O2', '-c', 'big.cc', '-o', 'big-local.o'], { cwd: work });
      const result = await run(LAUNCHER, ['g++', '-O2', '-c', 'big.cc', '-o', 'big-remote.o'], { cwd: work, env });
      expect(result.code, result.stderr).toBe(0);
      expect(readFileSync(join(work, 'big-remote.o')).equals(readFileSync(join(work, 'big-local.o')))).toBe(true);
      const s = await stats(env);
      expect(s.jobs.remote).toBe(1);
      expect(s.jobs.local).toBe(0);
      expect(s.hosts.r2.failures).toBe(1);
      expect(s.hosts.r2.retried).toBe(1);
      expect(s.hosts.r1.jobs).toBe(1);
      const r2Status = (await status(env)).hostStatus.find((h: { name: string }) => h.name === 'r2');
      expect(r2Status.lastError).toMatch(/disk is full/);
    } finally {
      await restartWorker(r2);
      execFileSync('umount', [small]);
    }
  });

  it('a compiler removed from a worker after it started: the job goes to the other host', async () => {
    const r2 = cluster.remote('r2');
    const bin = join(work, 'r2-bin');
    mkdirSync(bin, { recursive: true });
    symlinkSync('/usr/bin/gcc', join(bin, 'gcc'));
    // A worker that finds gcc through the symlink; then the symlink goes, as an uninstall would.
    await r2.stopWorker('SIGKILL');
    const special = await r2.spawn(['env', `PATH=${bin}:/usr/bin:/bin`, ...workerCommand(), '--slots', '2'], { readyPattern: /listening on/ });
    workers.set('r2', special);
    try {
      const env = await r2First();
      await zeroStats(env);
      unlinkSync(join(bin, 'gcc'));
      const result = await run(LAUNCHER, ['gcc', '-O2', '-c', 'quick.c', '-o', 'quick-missing.o'], { cwd: work, env });
      expect(result.code, result.stderr).toBe(0);
      expect(readFileSync(join(work, 'quick-missing.o')).equals(readFileSync(join(work, 'quick-local.o')))).toBe(true);
      const s = await stats(env);
      expect(s.jobs.local).toBe(0);
      expect(s.hosts.r2.failures).toBe(1);
      expect(s.hosts.r1.jobs).toBe(1);
      const r2Status = (await status(env)).hostStatus.find((h: { name: string }) => h.name === 'r2');
      expect(r2Status.lastError).toMatch(/cannot run .*gcc/);
    } finally {
      await special.stop('SIGKILL');
      workers.set('r2', await r2.startWorker(['--slots', '2']));
    }
  });

  it('the coordinator killed mid-build: the build goes on (locally where it must), and the next compile restarts it', async () => {
    const env = ferryEnv('r1/2 r2/2');
    const sample = join(FIXTURES, 'sample');
    const localDir = join(work, 'kill-local');
    const ferryDir = join(work, 'kill-ferry');
    expect((await run('make', ['-s', '-C', sample, '-j4', `BUILD=${localDir}`, 'CC=gcc', 'objects'], { timeoutMs: 300_000 })).code).toBe(0);
    const make = run('make', ['-s', '-C', sample, '-j8', `BUILD=${ferryDir}`, `CC=${LAUNCHER} gcc`, 'objects'], { env, timeoutMs: 300_000 });
    const first = await waitFor('some jobs done', async () => {
      const s = existsSync(join(env.FERRY_RUNTIME_DIR!, 'control.sock')) ? await status(env) : undefined;
      return s && s.jobsDone >= 4 ? s : undefined;
    });
    process.kill(first.pid, 'SIGKILL');
    const built = await make;
    expect(built.code, built.stderr).toBe(0);
    // Compared before the extra compile below, which may sweep a killed coordinator's temporary.
    expectSameBuild(localDir, ferryDir);
    // A write the killed coordinator had begun may have left a hidden temporary (never an object);
    // the next coordinator to write into that directory removes it.
    const again = await run(LAUNCHER, ['gcc', '-std=c11', '-Wall', '-Wextra', '-O2', '-Iinclude', '-c', 'src/crc32.c', '-o', join(ferryDir, 'obj', 'crc32.o')], { cwd: sample, env });
    expect(again.code, again.stderr).toBe(0);
    expect(readdirSync(join(ferryDir, 'obj')).filter((n) => n.includes('.ferry-'))).toEqual([]);
    await quickJobs(env, 1, 'after-kill');
    const after = await status(env);
    expect(after.pid).not.toBe(first.pid);
  });

  it('load: 500 jobs at -j64 over 2 workers with 4 slots each, every object correct, memory bounded', async () => {
    for (const remote of cluster.remotes) await restartWorker(remote, ['--slots', '4']);
    const dir = join(work, 'load');
    mkdirSync(join(dir, 'src'), { recursive: true });
    for (let i = 0; i < 500; i++) {
      writeFileSync(join(dir, 'src', `u${i}.c`), `#include <stdio.h>\n#include <string.h>\nint u${i}(const char *s) { return printf("%zu\\n", strlen(s) + ${i}); }\n`);
    }
    writeFileSync(
      join(dir, 'Makefile'),
      'SRCS := $(wildcard src/*.c)\nOBJS := $(SRCS:src/%.c=$(BUILD)/%.o)\nall: $(OBJS)\n$(BUILD)/%.o: src/%.c | $(BUILD)\n\t$(CC) -O2 -c $< -o $@\n$(BUILD):\n\tmkdir -p $@\n',
    );
    expect((await run('make', ['-s', '-C', dir, '-j2', 'BUILD=local', 'CC=gcc'], { timeoutMs: 600_000 })).code).toBe(0);
    const env = ferryEnv('r1/4 r2/4');
    const started = Date.now();
    const built = await run('make', ['-s', '-C', dir, '-j64', 'BUILD=ferry', `CC=${LAUNCHER} gcc`], { env, timeoutMs: 600_000 });
    const seconds = (Date.now() - started) / 1000;
    expect(built.code, built.stderr).toBe(0);
    for (let i = 0; i < 500; i++) {
      expect(readFileSync(join(dir, 'ferry', `u${i}.o`)).equals(readFileSync(join(dir, 'local', `u${i}.o`))), `u${i}.o`).toBe(true);
    }
    const s = await stats(env);
    expect(s.jobs.remote).toBe(500);
    expect(s.jobs.local).toBe(0);
    const pid = (await status(env)).pid;
    const vm = readFileSync(`/proc/${pid}/status`, 'utf8');
    const peakKb = Number(/VmHWM:\s+(\d+) kB/.exec(vm)![1]);
    console.log(
      `load test: 500 jobs, make -j64, 2 workers x 4 slots: ${seconds.toFixed(1)} s (${(500 / seconds).toFixed(1)} jobs/s); ` +
        `coordinator peak RSS ${(peakKb / 1024).toFixed(1)} MiB; r1 ${s.hosts.r1.jobs} jobs, r2 ${s.hosts.r2.jobs} jobs`,
    );
    expect(peakKb).toBeLessThan(512 * 1024);
    expect(s.hosts.r1.jobs).toBeGreaterThan(100);
    expect(s.hosts.r2.jobs).toBeGreaterThan(100);
  }, 600_000);
});

