/**
 * The shapes real builds give a compiler launcher: ccache in front of it or behind it, a
 * masquerading symlink, already preprocessed input, odd file names, empty and very large sources,
 * many jobs at once. Each compile goes through the real launcher and coordinator to a worker, and
 * each result is compared with a local compile.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI_MAIN, LAUNCHER, run, startProcess, WORKER_MAIN, type Started } from '../support/processes';

let dir: string;
let worker: Started;
let env: NodeJS.ProcessEnv;

const stats = async () => JSON.parse((await run(process.execPath, [CLI_MAIN, 'stats', '--json'], { env })).stdout);
const zero = () => run(process.execPath, [CLI_MAIN, 'stats', '--zero'], { env });
const same = (a: string, b: string) => readFileSync(join(dir, a)).equals(readFileSync(join(dir, b)));

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-shapes-'));
  worker = await startProcess(process.execPath, [WORKER_MAIN, '--listen', `unix:${join(dir, 'w.sock')}`, '--slots', '4', '--allow', 'gcc,g++,cc'], /listening on/);
  env = {
    ...process.env,
    FERRY_RUNTIME_DIR: join(dir, 'run'),
    FERRY_STATE_DIR: join(dir, 'state'),
    FERRY_HOSTS: `w/4,direct=${join(dir, 'w.sock')}`,
    CCACHE_DIR: join(dir, 'ccache'),
  };
  delete env.NODE_EXTRA_CA_CERTS;
  delete env.CCACHE_PREFIX;
  writeFileSync(join(dir, 'x.c'), '#include <stdlib.h>\nint twice(int v) { return abs(v) * 2; }\n');
});

afterAll(async () => {
  await run(process.execPath, [CLI_MAIN, 'stop'], { env });
  await worker?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('ccache and masquerading', () => {
  it('`ferry ccache gcc` runs ccache first, which sends its miss back through ferry', async () => {
    await zero();
    const miss = await run(LAUNCHER, ['ccache', 'gcc', '-O2', '-c', 'x.c', '-o', 'ccache1.o'], { cwd: dir, env });
    expect(miss.code, miss.stderr).toBe(0);
    expect((await stats()).jobs.remote).toBe(1);
    const hit = await run(LAUNCHER, ['ccache', 'gcc', '-O2', '-c', 'x.c', '-o', 'ccache2.o'], { cwd: dir, env });
    expect(hit.code, hit.stderr).toBe(0);
    expect((await stats()).jobs.remote).toBe(1);
    execFileSync('gcc', ['-O2', '-c', 'x.c', '-o', 'local.o'], { cwd: dir });
    expect(same('ccache1.o', 'local.o') && same('ccache2.o', 'local.o')).toBe(true);
  });

  it('keeps source columns where they reach the object: C++ the exact way, C again the exact way', async () => {
    // Full preprocessing moves tokens to other columns: std::source_location (here also through
    // a macro, as logging macros use it) would record other columns than a local build's.
    writeFileSync(join(dir, 'loc1.cc'), '#include <source_location>\nunsigned c() {  auto l = std::source_location::current();   return l.column() + l.line(); }\n');
    writeFileSync(join(dir, 'loc2.cc'), '#include <source_location>\n#define HERE() std::source_location::current()\nunsigned d() {  auto l =      HERE();   return l.column(); }\n');
    await zero();
    for (const source of ['loc1.cc', 'loc2.cc']) {
      const result = await run(LAUNCHER, ['g++', '-O2', '-std=c++20', '-c', source, '-o', `${source}.ferry.o`], { cwd: dir, env });
      expect(result.code, result.stderr).toBe(0);
      execFileSync('g++', ['-O2', '-std=c++20', '-c', source, '-o', `${source}.local.o`], { cwd: dir });
      expect(same(`${source}.ferry.o`, `${source}.local.o`), source).toBe(true);
      // Fully preprocessed, the columns would differ: the plain -E split gives another object.
      execFileSync('sh', ['-c', `g++ -O2 -std=c++20 -E ${source} > ${source}.ii && g++ -O2 -std=c++20 -c ${source}.ii -o ${source}.full.o`], { cwd: dir });
      expect(same(`${source}.full.o`, `${source}.local.o`), source).toBe(false);
    }
    // C++ is preprocessed the exact way from the start (see cppModeOf): nothing done twice.
    expect((await stats()).jobs.exactReruns).toBe(0);

    // C is preprocessed in full; a source naming a column builtin goes round again the exact way.
    writeFileSync(join(dir, 'named.c'), 'const char *which = "__builtin_source_location";\nint twice(int v) { return v * 2; }\n');
    const named = await run(LAUNCHER, ['gcc', '-O2', '-c', 'named.c', '-o', 'named.ferry.o'], { cwd: dir, env });
    expect(named.code, named.stderr).toBe(0);
    execFileSync('gcc', ['-O2', '-c', 'named.c', '-o', 'named.local.o'], { cwd: dir });
    expect(same('named.ferry.o', 'named.local.o')).toBe(true);
    expect((await stats()).jobs.exactReruns).toBe(1);

    // A clean C job is not compiled twice.
    await zero();
    const clean = await run(LAUNCHER, ['gcc', '-O2', '-c', 'x.c', '-o', 'clean.o'], { cwd: dir, env });
    expect(clean.code, clean.stderr).toBe(0);
    const s = await stats();
    expect(s.jobs.remote).toBe(1);
    expect(s.jobs.exactReruns).toBe(0);
  });

  it('a symlink named gcc that points at ferry compiles remotely with the real gcc', async () => {
    await zero();
    mkdirSync(join(dir, 'masq'));
    symlinkSync(LAUNCHER, join(dir, 'masq', 'gcc'));
    const masqEnv = { ...env, PATH: `${join(dir, 'masq')}:${env.PATH}` };
    const result = await run('gcc', ['-O2', '-c', 'x.c', '-o', 'masq.o'], { cwd: dir, env: masqEnv });
    expect(result.code, result.stderr).toBe(0);
    execFileSync('gcc', ['-O2', '-c', 'x.c', '-o', 'local.o'], { cwd: dir });
    expect(same('masq.o', 'local.o')).toBe(true);
    expect((await stats()).jobs.remote).toBe(1);
  });

  it('sends an already preprocessed .i as it is (ccache run_second_cpp=false)', async () => {
    await zero();
    execFileSync('gcc', ['-O2', '-E', 'x.c', '-o', 'x.i'], { cwd: dir });
    const result = await run(LAUNCHER, ['gcc', '-O2', '-c', 'x.i', '-o', 'fromi.o'], { cwd: dir, env });
    expect(result.code, result.stderr).toBe(0);
    execFileSync('gcc', ['-O2', '-c', 'x.i', '-o', 'locali.o'], { cwd: dir });
    expect(same('fromi.o', 'locali.o')).toBe(true);
    const s = await stats();
    expect(s.jobs.remote).toBe(1);
    expect(s.bytes.sourceRaw).toBe(statSync(join(dir, 'x.i')).size);

    // The same through ccache with run_second_cpp=false: ccache preprocesses, ferry does not again.
    await zero();
    const ccacheEnv = { ...env, CCACHE_PREFIX: LAUNCHER, CCACHE_NOCPP2: '1', CCACHE_DIR: join(dir, 'ccache-nocpp2') };
    const viaCcache = await run('ccache', ['gcc', '-O2', '-c', 'x.c', '-o', 'nocpp2.o'], { cwd: dir, env: ccacheEnv });
    expect(viaCcache.code, viaCcache.stderr).toBe(0);
    const t = await stats();
    expect(t.jobs.remote).toBe(1);
    // What travelled is ccache's plain `gcc -E` output (the size of x.i above), not a second,
    // -fdirectives-only preprocessing of x.c by Ferry (which is larger).
    expect(t.bytes.sourceRaw).toBe(statSync(join(dir, 'x.i')).size);
    expect(execFileSync('gcc', ['-O2', '-E', '-fdirectives-only', 'x.c'], { cwd: dir }).length).not.toBe(t.bytes.sourceRaw);
  });
});

describe('optimisation levels and prefix maps, without -g', () => {
  it.each([
    ['gcc', 'x.c', '-O0'],
    ['gcc', 'x.c', '-O2'],
    ['gcc', 'x.c', '-O3'],
    ['gcc', 'x.c', '-O2 -ffile-prefix-map=@DIR@=.'],
    ['gcc', 'x.c', '-O2 -fdebug-prefix-map=@DIR@=/src -fmacro-prefix-map=@DIR@=/m'],
    ['g++', 'y.cc', '-O0'],
    ['g++', 'y.cc', '-O2'],
    ['g++', 'y.cc', '-O3 -std=c++17'],
    ['g++', 'y.cc', '-O2 -ffile-prefix-map=@DIR@=.'],
  ])('%s %s %s: byte-identical object', async (compiler, source, flags) => {
    writeFileSync(join(dir, 'y.cc'), '#include <string>\n#include <vector>\nstd::size_t total(const std::vector<std::string> &v) { std::size_t n = 0; for (auto &s : v) n += s.size(); return n; }\n');
    await zero();
    const args = [...flags.replaceAll('@DIR@', dir).split(' '), '-c', join(dir, source)];
    execFileSync(compiler, [...args, '-o', 'opt-local.o'], { cwd: dir });
    const remote = await run(LAUNCHER, [compiler, ...args, '-o', 'opt-remote.o'], { cwd: dir, env });
    expect(remote.code, remote.stderr).toBe(0);
    expect(same('opt-remote.o', 'opt-local.o')).toBe(true);
    expect((await stats()).jobs.remote).toBe(1);
  });
});

describe('file names and sizes', () => {
  it.each([
    ['sub dir/with space.c'],
    ['comma,dir/a,b.c'],
    ['ünïcödé/nåme.c'],
    ['back\\slash/b\\s.c'],
    ['quote"dir/q.c'],
  ])('compiles %s remotely, same object, same warning text', async (name) => {
    await zero();
    mkdirSync(join(dir, name, '..'), { recursive: true });
    writeFileSync(join(dir, name), '#include <stdio.h>\nint show(void) { int unused; return printf("%s\\n", __FILE__); }\n');
    const local = await run('gcc', ['-g', '-Wall', '-c', name, '-o', 'local.o'], { cwd: dir });
    const remote = await run(LAUNCHER, ['gcc', '-g', '-Wall', '-c', name, '-o', 'remote.o'], { cwd: dir, env });
    expect(remote.code, remote.stderr).toBe(0);
    expect(remote.stderr).toBe(local.stderr);
    expect(remote.stderr).toMatch(/unused variable/);
    // With -g the only allowed difference is DW_AT_producer; compare everything but .debug_* here.
    const sections = (f: string) => execFileSync('sh', ['-c', `objdump -s -j .text -j .rodata -j .data ${f}`], { cwd: dir, encoding: 'utf8' }).replace(/^.*file format.*$/m, '');
    expect(sections('remote.o')).toBe(sections('local.o'));
    expect((await stats()).jobs.remote).toBe(1);
  });

  it('compiles an empty source', async () => {
    writeFileSync(join(dir, 'empty.c'), '');
    const remote = await run(LAUNCHER, ['gcc', '-O2', '-c', 'empty.c', '-o', 'empty-remote.o'], { cwd: dir, env });
    expect(remote.code, remote.stderr).toBe(0);
    execFileSync('gcc', ['-O2', '-c', 'empty.c', '-o', 'empty-local.o'], { cwd: dir });
    expect(same('empty-remote.o', 'empty-local.o')).toBe(true);
  });

  it('compiles a 200,000-line source', async () => {
    await zero();
    const lines = Array.from({ length: 200_000 }, (_, i) => `int v${i} = ${i};`);
    writeFileSync(join(dir, 'big.c'), `${lines.join('\n')}\n`);
    const remote = await run(LAUNCHER, ['gcc', '-O0', '-c', 'big.c', '-o', 'big-remote.o'], { cwd: dir, env, timeoutMs: 300_000 });
    expect(remote.code, remote.stderr).toBe(0);
    execFileSync('gcc', ['-O0', '-c', 'big.c', '-o', 'big-local.o'], { cwd: dir });
    expect(same('big-remote.o', 'big-local.o')).toBe(true);
    const s = await stats();
    expect(s.jobs.remote).toBe(1);
    expect(s.bytes.sourceSent).toBeLessThan(s.bytes.sourceRaw);
  });

  it('runs 50 jobs at once, every object correct', async () => {
    await zero();
    mkdirSync(join(dir, 'many'));
    for (let i = 0; i < 50; i++) {
      writeFileSync(join(dir, 'many', `f${i}.c`), `#include <string.h>\nint f${i}(const char *s) { return (int)strlen(s) + ${i}; }\n`);
    }
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) => run(LAUNCHER, ['gcc', '-O2', '-c', `many/f${i}.c`, '-o', `many/f${i}.o`], { cwd: dir, env, timeoutMs: 300_000 })),
    );
    for (const [i, r] of results.entries()) expect(r.code, `job ${i}: ${r.stderr}`).toBe(0);
    for (let i = 0; i < 50; i++) {
      execFileSync('gcc', ['-O2', '-c', `many/f${i}.c`, '-o', `many/f${i}.local.o`], { cwd: dir });
      expect(same(`many/f${i}.o`, `many/f${i}.local.o`), `f${i}.o`).toBe(true);
    }
    const s = await stats();
    expect(s.jobs.remote).toBe(50);
    expect(s.jobs.local).toBe(0);
  });
});

describe('placement', () => {
  /** A compile of about a second per 500 functions, to keep a slot busy. */
  const slowSource = (functions = 500) =>
    `${Array.from({ length: functions }, (_, i) => `int s${i}(int x){ for(int i=0;i<x;i++) x ^= i*${i} + (x>>3); return x*${i}; }`).join('\n')}\n`;

  it('localhost/N: when the remote slot is busy, this machine compiles too, and frees its slot when done', async () => {
    mkdirSync(join(dir, 'place'), { recursive: true });
    for (let i = 0; i < 4; i++) writeFileSync(join(dir, 'place', `p${i}.c`), slowSource().replace(/s(\d+)\(/g, `p${i}_$1(`));
    const localEnv = { ...env, FERRY_HOSTS: `w/1,direct=${join(dir, 'w.sock')} localhost/1` };
    await zero();
    const results = await Promise.all(
      [0, 1, 2, 3].map((i) => run(LAUNCHER, ['gcc', '-O2', '-c', `place/p${i}.c`, '-o', `place/p${i}.o`], { cwd: dir, env: localEnv, timeoutMs: 120_000 })),
    );
    for (const r of results) expect(r.code, r.stderr).toBe(0);
    for (let i = 0; i < 4; i++) {
      execFileSync('gcc', ['-O2', '-c', `place/p${i}.c`, '-o', `place/p${i}.local.o`], { cwd: dir });
      expect(same(`place/p${i}.o`, `place/p${i}.local.o`)).toBe(true);
    }
    const s = await stats();
    expect(s.local['localhost-slot']).toBeGreaterThanOrEqual(1);
    expect(s.jobs.remote).toBeGreaterThanOrEqual(1);
    expect(s.jobs.remote + s.jobs.local).toBe(4);
    // Every local slot was given back when its compiler exited.
    const status = JSON.parse((await run(process.execPath, [CLI_MAIN, 'status', '--json'], { env: localEnv })).stdout);
    expect(status.localSlots).toBe(1);
    expect(status.localRunning).toBe(0);
  });

  it('places by the workers own load, jobs of another initiator included', async () => {
    const second = await startProcess(process.execPath, [WORKER_MAIN, '--listen', `unix:${join(dir, 'w2.sock')}`, '--slots', '1', '--allow', 'gcc'], /listening on/);
    try {
      // Two coordinators (two users, say) sharing the workers w (4 slots, capped at 1 here) and w2.
      const hosts = `w/1,direct=${join(dir, 'w.sock')} w2/1,direct=${join(dir, 'w2.sock')}`;
      const a = { ...env, FERRY_HOSTS: hosts, FERRY_RUNTIME_DIR: join(dir, 'run-a'), FERRY_STATE_DIR: join(dir, 'state-a') };
      const b = { ...env, FERRY_HOSTS: hosts, FERRY_RUNTIME_DIR: join(dir, 'run-b'), FERRY_STATE_DIR: join(dir, 'state-b') };
      try {
        // Both coordinators connected to both workers before the measured jobs.
        for (const e of [a, b]) expect((await run(LAUNCHER, ['gcc', '-c', 'x.c', '-o', 'warm.o'], { cwd: dir, env: e })).code).toBe(0);
        // Long enough (several seconds) to still run while B looks and places its job, on a slow machine too.
        writeFileSync(join(dir, 'busy.c'), slowSource(3000));
        const busy = run(LAUNCHER, ['gcc', '-O2', '-c', 'busy.c', '-o', 'busy.o'], { cwd: dir, env: a, timeoutMs: 120_000 });
        const busyHost = await (async () => {
          for (let i = 0; i < 100; i++) {
            const s = JSON.parse((await run(process.execPath, [CLI_MAIN, 'status', '--json'], { env: a })).stdout);
            const h = s.running && s.hostStatus.find((x: { running: unknown[] }) => x.running.length > 0);
            if (h) return h.name as string;
            await new Promise((r) => setTimeout(r, 50));
          }
          throw new Error('the busy job never started');
        })();
        // B sees A's job in the worker's own count and sends its job to the other worker.
        await new Promise((r) => setTimeout(r, 300));
        const viewB = JSON.parse((await run(process.execPath, [CLI_MAIN, 'status', '--json'], { env: b })).stdout);
        expect(viewB.hostStatus.find((h: { name: string }) => h.name === busyHost).workerRunning).toBe(1);
        const before = JSON.parse((await run(process.execPath, [CLI_MAIN, 'stats', '--json'], { env: b })).stdout);
        expect((await run(LAUNCHER, ['gcc', '-O2', '-c', 'x.c', '-o', 'b.o'], { cwd: dir, env: b })).code).toBe(0);
        const after = JSON.parse((await run(process.execPath, [CLI_MAIN, 'stats', '--json'], { env: b })).stdout);
        const other = busyHost === 'w' ? 'w2' : 'w';
        expect((after.hosts[other]?.jobs ?? 0) - (before.hosts[other]?.jobs ?? 0)).toBe(1);
        expect((await busy).code).toBe(0);
      } finally {
        for (const e of [a, b]) await run(process.execPath, [CLI_MAIN, 'stop'], { env: e });
      }
    } finally {
      await second.stop();
    }
  });
});

describe('dependency files', () => {
  it.each([
    [['-MD']],
    [['-MMD', '-MP']],
    [['-MD', '-MF', 'deps/custom.d', '-MT', 'custom-target']],
    [['-MMD', '-MQ', '$(weird) target']],
    [['-Wp,-MD,deps/wp.d']],
  ])('%j writes the same .d file as a local compile', async (flags) => {
    mkdirSync(join(dir, 'deps'), { recursive: true });
    mkdirSync(join(dir, 'dl'), { recursive: true });
    mkdirSync(join(dir, 'dr'), { recursive: true });
    // Same object path for both runs, so the .d files name the same target; outputs moved aside.
    const depFile = flags.includes('-MF') ? 'deps/custom.d' : flags[0].startsWith('-Wp') ? 'deps/wp.d' : 'deps/x.d';
    const args = ['-O2', ...flags, '-c', 'x.c', '-o', 'deps/x.o'];
    const compile = async (command: string, commandArgs: string[], into: string) => {
      const r = await run(command, commandArgs, { cwd: dir, env });
      expect(r.code, r.stderr).toBe(0);
      execFileSync('mv', [join(dir, depFile), join(dir, into, 'x.d')]);
    };
    await compile('gcc', args, 'dl');
    await zero();
    await compile(LAUNCHER, ['gcc', ...args], 'dr');
    expect((await stats()).jobs.remote).toBe(1);
    expect(readFileSync(join(dir, 'dr', 'x.d'), 'utf8')).toBe(readFileSync(join(dir, 'dl', 'x.d'), 'utf8'));
  });
});
