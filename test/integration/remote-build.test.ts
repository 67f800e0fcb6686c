/**
 * The whole path with real parts: the native launcher, a coordinator it starts on demand, SSH
 * connections (ssh2) to real sshd's in network namespaces, workers listening on the namespaces'
 * own 127.0.0.1, real gcc/g++, make, CMake + ninja and ccache. Every object is compared with a
 * local build byte for byte.
 */
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { expectSameBuild } from '../support/builds';
import { clusterSupport, startCluster, type Cluster, type Spawned } from '../support/cluster';
import { CLI_MAIN, LAUNCHER, ROOT, run, WORKER_MAIN } from '../support/processes';

const support = clusterSupport();
const FIXTURES = join(ROOT, 'test', 'fixtures');

/** Jobs a worker reports in its own log ("job <id> <source>: <compiler> exit <n> …"). */
function workerJobs(worker: Spawned | undefined): string[] {
  return (worker?.output() ?? '').split('\n').filter((line) => /^job \S+ .*exit \d+/.test(line));
}

describe.skipIf(!support.ok)('remote builds through SSH tunnels', () => {
  let cluster: Cluster;
  let work: string;
  const workers = new Map<string, Spawned>();
  let runtimeDirs: string[] = [];

  /** An environment with its own coordinator (runtime and state directories). */
  function ferryEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    const base = mkdtempSync(join(work, 'ferry-'));
    runtimeDirs.push(join(base, 'run'));
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...cluster.env(),
      FERRY_RUNTIME_DIR: join(base, 'run'),
      FERRY_STATE_DIR: join(base, 'state'),
      FERRY_HOSTS: 'r1/2 r2/2',
      CCACHE_DIR: join(base, 'ccache'),
      ...extra,
    };
    delete env.NODE_EXTRA_CA_CERTS;
    return env;
  }

  async function stats(env: NodeJS.ProcessEnv) {
    const result = await run(process.execPath, [CLI_MAIN, 'stats', '--json'], { env });
    expect(result.code, result.stderr).toBe(0);
    return JSON.parse(result.stdout);
  }

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'ferry-e2e-'));
    cluster = await startCluster({
      remotes: 2,
      worker: {
        command: () => [process.execPath, WORKER_MAIN, '--listen', '127.0.0.1:3633', '--slots', '2', '--allow', 'gcc,g++,cc,c++'],
        readyPattern: /listening on/,
      },
    });
    for (const remote of cluster.remotes) workers.set(remote.name, await remote.startWorker());
  });

  afterEach(async () => {
    // Stop every coordinator this test started.
    for (const dir of runtimeDirs) {
      if (existsSync(join(dir, 'control.sock'))) {
        await run(process.execPath, [CLI_MAIN, 'stop'], { env: { ...process.env, FERRY_RUNTIME_DIR: dir } });
      }
    }
    runtimeDirs = [];
  });

  afterAll(async () => {
    await cluster?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('compiles C and C++ remotely into objects identical to local ones', async () => {
    const env = ferryEnv();
    const dir = join(work, 'single');
    cpSync(join(FIXTURES, 'single'), dir, { recursive: true });
    const before = workerJobs(workers.get('r1')).length + workerJobs(workers.get('r2')).length;
    const cases: Array<[string, string, string[]]> = [
      ['gcc', 'hello.c', ['-O2', '-Wall']],
      ['g++', 'hello.cc', ['-O2', '-std=c++17']],
      ['gcc', 'empty.c', ['-O0']],
      ['gcc', 'dir with space/spaced.c', ['-O3', '-DSPACED=1']],
    ];
    for (const [compiler, source, flags] of cases) {
      const local = execFileSync(compiler, [...flags, '-c', source, '-o', 'local.o'], { cwd: dir });
      const remote = await run(LAUNCHER, [compiler, ...flags, '-c', source, '-o', 'remote.o'], { cwd: dir, env });
      expect(remote.code, remote.stderr).toBe(0);
      expect(remote.stderr).toBe(local.toString());
      expect(readFileSync(join(dir, 'remote.o')).equals(readFileSync(join(dir, 'local.o'))), `${source}: objects differ`).toBe(true);
    }
    const after = workerJobs(workers.get('r1')).length + workerJobs(workers.get('r2')).length;
    expect(after - before).toBe(cases.length);
    const s = await stats(env);
    expect(s.jobs.remote).toBe(cases.length);
    expect(s.jobs.local).toBe(0);
  });

  it('passes on the compiler failure exactly: diagnostics with source lines, exit status, no stale object', async () => {
    const env = ferryEnv();
    const dir = join(work, 'failing');
    cpSync(join(FIXTURES, 'single'), dir, { recursive: true });
    const local = await run('gcc', ['-Wall', '-c', 'error.c', '-o', 'error.o'], { cwd: dir });
    writeFileSync(join(dir, 'error.o'), 'stale object from an earlier build');
    const remote = await run(LAUNCHER, ['gcc', '-Wall', '-c', 'error.c', '-o', 'error.o'], { cwd: dir, env });
    expect(local.code).not.toBe(0);
    expect(remote.code).toBe(local.code);
    expect(remote.stderr).toBe(local.stderr);
    expect(remote.stderr).toMatch(/^error\.c:\d+:\d+: error: /m);
    expect(remote.stderr).toMatch(/^ +\d+ \| /m);
    expect(existsSync(join(dir, 'error.o'))).toBe(false);
    const warn = await run(LAUNCHER, ['gcc', '-Wall', '-Wextra', '-c', 'warn.c', '-o', 'warn.o'], { cwd: dir, env });
    const warnLocal = await run('gcc', ['-Wall', '-Wextra', '-c', 'warn.c', '-o', 'warn-local.o'], { cwd: dir });
    expect(warn.code).toBe(0);
    expect(warn.stderr).toBe(warnLocal.stderr);
    expect(warn.stderr).toMatch(/warning/);
    const s = await stats(env);
    expect(s.jobs.compileErrors).toBe(1);
    expect(s.jobs.remote).toBe(2);
  });

  it('builds the sample project with make -j through Ferry, every object and .d identical to local', async () => {
    const env = ferryEnv();
    const sample = join(FIXTURES, 'sample');
    const local = await run('make', ['-s', '-C', sample, '-j4', `BUILD=${join(work, 'make-local')}`, 'CC=gcc', 'objects'], { timeoutMs: 300_000 });
    expect(local.code, local.stderr).toBe(0);
    const viaFerry = await run('make', ['-s', '-C', sample, '-j8', `BUILD=${join(work, 'make-ferry')}`, `CC=${LAUNCHER} gcc`, 'objects'], { env, timeoutMs: 300_000 });
    expect(viaFerry.code, viaFerry.stderr).toBe(0);
    const objects = expectSameBuild(join(work, 'make-local'), join(work, 'make-ferry'));
    expect(objects.length).toBeGreaterThanOrEqual(64);
    const s = await stats(env);
    expect(s.jobs.remote).toBe(objects.length / 2);
    // The sample's files share one argv shape: once it is learnt, their preprocessing skips gcc's
    // driver, and the objects and .d files above are still identical.
    expect(s.jobs.preprocessedDirect).toBeGreaterThan(0);
    // And from the first such job on, cc1's fork server starts (tens of ms): later ones are forked from it.
    expect(s.jobs.preprocessedForked).toBeGreaterThan(0);
    expect(s.jobs.preprocessedForked).toBeLessThanOrEqual(s.jobs.preprocessedDirect);
    // On the workers, the shape's compiles run cc1 and as without gcc's driver once learnt.
    const direct = [...workerJobs(workers.get('r1')), ...workerJobs(workers.get('r2'))].filter((l) => /\(cc1 (and|piped into) as, without the driver\)$/.test(l));
    expect(direct.length).toBeGreaterThan(0);
    expect(s.hosts.r1.jobs).toBeGreaterThan(0);
    expect(s.hosts.r2.jobs).toBeGreaterThan(0);
  });

  it('builds the sample with make, ccache in front (CCACHE_PREFIX=ferry): cold remote, warm from the cache, all identical', async () => {
    const env = ferryEnv({ CCACHE_PREFIX: LAUNCHER });
    const sample = join(FIXTURES, 'sample');
    const local = join(work, 'ccache-make-local');
    const cached = join(work, 'ccache-make-ferry');
    expect((await run('make', ['-s', '-C', sample, '-j4', `BUILD=${local}`, 'CC=gcc', 'objects'], { timeoutMs: 300_000 })).code).toBe(0);
    const cold = await run('make', ['-s', '-C', sample, '-j8', `BUILD=${cached}`, 'CC=ccache gcc', 'objects'], { env, timeoutMs: 300_000 });
    expect(cold.code, cold.stderr).toBe(0);
    const objects = expectSameBuild(local, cached);
    expect((await stats(env)).jobs.remote).toBe(objects.length / 2);
    rmSync(join(cached, 'obj'), { recursive: true });
    const warm = await run('make', ['-s', '-C', sample, '-j8', `BUILD=${cached}`, 'CC=ccache gcc', 'objects'], { env, timeoutMs: 300_000 });
    expect(warm.code, warm.stderr).toBe(0);
    expectSameBuild(local, cached);
    expect((await stats(env)).jobs.remote).toBe(objects.length / 2);
  });

  it('builds with CMake + ninja and ccache as the launcher, misses sent through ferry', async () => {
    const env = ferryEnv({ CCACHE_PREFIX: LAUNCHER });
    const sample = join(FIXTURES, 'sample');
    for (const [dir, extra] of [
      [join(work, 'cmake-ccache-local'), []],
      [join(work, 'cmake-ccache-ferry'), ['-DCMAKE_C_COMPILER_LAUNCHER=ccache']],
    ] as const) {
      const configure = await run('cmake', ['-S', sample, '-B', dir, '-G', 'Ninja', '-DCMAKE_BUILD_TYPE=Release', ...extra], { env, timeoutMs: 120_000 });
      expect(configure.code, configure.stderr).toBe(0);
      const ninja = await run('ninja', ['-C', dir, '-j8'], { env, timeoutMs: 300_000 });
      expect(ninja.code, ninja.stdout + ninja.stderr).toBe(0);
    }
    const objects = expectSameBuild(join(work, 'cmake-ccache-local'), join(work, 'cmake-ccache-ferry'), (n) => n.endsWith('.o'));
    expect((await stats(env)).jobs.remote).toBe(objects.length);
  });

  it('works as CMake launcher with ninja, objects identical to a plain CMake build', async () => {
    const env = ferryEnv();
    const sample = join(FIXTURES, 'sample');
    const build = async (dir: string, launcher: string[], e: NodeJS.ProcessEnv) => {
      const configure = await run('cmake', ['-S', sample, '-B', dir, '-G', 'Ninja', '-DCMAKE_BUILD_TYPE=Release', ...launcher], { env: e, timeoutMs: 120_000 });
      expect(configure.code, configure.stderr).toBe(0);
      const ninja = await run('ninja', ['-C', dir, '-j8'], { env: e, timeoutMs: 300_000 });
      expect(ninja.code, ninja.stdout + ninja.stderr).toBe(0);
    };
    await build(join(work, 'cmake-local'), [], process.env);
    await build(join(work, 'cmake-ferry'), [`-DCMAKE_C_COMPILER_LAUNCHER=${LAUNCHER}`], env);
    const objects = expectSameBuild(join(work, 'cmake-local'), join(work, 'cmake-ferry'), (n) => n.endsWith('.o'));
    expect(objects.length).toBeGreaterThanOrEqual(32);
    const s = await stats(env);
    expect(s.jobs.remote).toBe(objects.length);
  });

  it('sits behind ccache: a miss compiles remotely, a hit sends no job', async () => {
    const env = ferryEnv({ CCACHE_PREFIX: LAUNCHER });
    const dir = join(work, 'ccache');
    mkdirSync(dir);
    writeFileSync(join(dir, 'x.c'), '#include <string.h>\nint length(const char *s) { return (int)strlen(s); }\n');
    const jobs = () => workerJobs(workers.get('r1')).length + workerJobs(workers.get('r2')).length;
    const before = jobs();
    const miss = await run('ccache', ['gcc', '-O2', '-c', 'x.c', '-o', 'x.o'], { cwd: dir, env });
    expect(miss.code, miss.stderr).toBe(0);
    expect(jobs()).toBe(before + 1);
    const first = readFileSync(join(dir, 'x.o'));
    rmSync(join(dir, 'x.o'));
    const hit = await run('ccache', ['gcc', '-O2', '-c', 'x.c', '-o', 'x.o'], { cwd: dir, env });
    expect(hit.code, hit.stderr).toBe(0);
    expect(jobs()).toBe(before + 1);
    expect(readFileSync(join(dir, 'x.o')).equals(first)).toBe(true);
    const ccacheStats = execFileSync('ccache', ['--print-stats'], { env, encoding: 'utf8' });
    expect(ccacheStats).toMatch(/^direct_cache_hit\t1$/m);
    execFileSync('gcc', ['-O2', '-c', 'x.c', '-o', 'local.o'], { cwd: dir });
    expect(first.equals(readFileSync(join(dir, 'local.o')))).toBe(true);
    expect((await stats(env)).jobs.remote).toBe(1);
  });

  it('refuses a host whose key is unknown, compiles locally and says so', async () => {
    const config = join(work, 'ssh_config_unknown_key');
    const emptyKnownHosts = join(work, 'known_hosts_empty');
    writeFileSync(emptyKnownHosts, '');
    writeFileSync(config, readFileSync(cluster.sshConfigPath, 'utf8').replaceAll(cluster.knownHostsPath, emptyKnownHosts));
    const env = ferryEnv({ FERRY_SSH_CONFIG: config, FERRY_HOSTS: 'r1/2' });
    const dir = join(work, 'unknown-key');
    cpSync(join(FIXTURES, 'single'), dir, { recursive: true });
    const result = await run(LAUNCHER, ['gcc', '-c', 'hello.c', '-o', 'hello.o'], { cwd: dir, env });
    expect(result.code).toBe(0);
    expect(result.stderr).toMatch(/^ferry: no remote host is reachable \(r1: .*host key.*\); compiling locally/m);
    expect(existsSync(join(dir, 'hello.o'))).toBe(true);
    const status = await run(process.execPath, [CLI_MAIN, 'status', '--json'], { env });
    const host = JSON.parse(status.stdout).hostStatus[0];
    expect(host.state).toBe('down');
    expect(host.lastError).toMatch(/host key/i);
    expect(host.lastError).toMatch(/ssh-keyscan/);
    const s = await stats(env);
    expect(s.local['no-host-available']).toBe(1);
    expect(s.jobs.remote).toBe(0);
  });

  it('compiles locally when no host answers, telling the user once per build', async () => {
    const env = ferryEnv({ FERRY_HOSTS: 'r2/2' });
    const r2 = cluster.remote('r2');
    await r2.stopSshd();
    try {
      const dir = join(work, 'down');
      cpSync(join(FIXTURES, 'single'), dir, { recursive: true });
      const first = await run(LAUNCHER, ['gcc', '-c', 'hello.c', '-o', 'a.o'], { cwd: dir, env });
      const second = await run(LAUNCHER, ['gcc', '-c', 'hello.c', '-o', 'b.o'], { cwd: dir, env });
      expect(first.code).toBe(0);
      expect(second.code).toBe(0);
      expect(first.stderr).toMatch(/^ferry: no remote host is reachable \(r2: .*\); compiling locally/m);
      expect(second.stderr).toBe('');
      expect(readFileSync(join(dir, 'a.o')).equals(readFileSync(join(dir, 'b.o')))).toBe(true);
      const s = await stats(env);
      expect(s.local['no-host-available']).toBe(2);
    } finally {
      await r2.startSshd();
    }
  });

  it('compiles locally with a notice when the coordinator cannot start', async () => {
    const env = ferryEnv({ FERRY_NODE: '/nonexistent/node' });
    const dir = join(work, 'no-coordinator');
    cpSync(join(FIXTURES, 'single'), dir, { recursive: true });
    const result = await run(LAUNCHER, ['gcc', '-c', 'hello.c', '-o', 'hello.o'], { cwd: dir, env });
    expect(result.code).toBe(0);
    expect(result.stderr).toMatch(/^ferry: .*compiling locally/m);
    expect(existsSync(join(dir, 'hello.o'))).toBe(true);
    const s = await stats({ ...env, FERRY_NODE: undefined });
    expect(s.jobs.local).toBe(1);
    expect(Object.keys(s.local)[0]).toMatch(/^coordinator-/);
  });
});
