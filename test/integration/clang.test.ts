/**
 * clang and clang++ through Ferry: preprocessed here with -frewrite-includes, compiled remotely
 * under the source's own name (clang names the compile unit after it). Skipped where clang is not
 * installed; CI installs Debian's clang.
 */
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI_MAIN, LAUNCHER, ROOT, run, startProcess, WORKER_MAIN, type Started } from '../support/processes';

const haveClang = existsSync('/usr/bin/clang') && existsSync('/usr/bin/clang++');
if (!haveClang && process.env.CI) throw new Error('clang is missing on this CI machine (.ci/run installs it)');

describe.skipIf(!haveClang)('clang through Ferry', () => {
  let dir: string;
  let worker: Started;
  let env: NodeJS.ProcessEnv;
  const stats = async () => JSON.parse((await run(process.execPath, [CLI_MAIN, 'stats', '--json'], { env })).stdout);

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-clang-'));
    cpSync(join(ROOT, 'test', 'fixtures'), join(dir, 'fx'), { recursive: true });
    mkdirSync(join(dir, 'out'));
    worker = await startProcess(process.execPath, [WORKER_MAIN, '--listen', `unix:${join(dir, 'w.sock')}`, '--slots', '2', '--allow', 'clang,clang++'], /listening on/);
    env = { ...process.env, FERRY_RUNTIME_DIR: join(dir, 'run'), FERRY_STATE_DIR: join(dir, 'state'), FERRY_HOSTS: `w/2,direct=${join(dir, 'w.sock')}` };
    delete env.NODE_EXTRA_CA_CERTS;
  });

  afterAll(async () => {
    await run(process.execPath, [CLI_MAIN, 'stop'], { env });
    await worker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function compare(compiler: string, args: string[], cwd: string) {
    const local = await run(compiler, [...args, '-o', join(dir, 'out', 'local.o')], { cwd });
    const remote = await run(LAUNCHER, [compiler, ...args, '-o', join(dir, 'out', 'remote.o')], { cwd, env });
    expect(remote.code, remote.stderr).toBe(local.code);
    expect(remote.stderr).toBe(local.stderr);
    if (local.code === 0) {
      expect(readFileSync(join(dir, 'out', 'remote.o')).equals(readFileSync(join(dir, 'out', 'local.o'))), `${args.join(' ')}: objects differ`).toBe(true);
    }
  }

  it('compiles every C file of the sample at -O0 and -O2 into identical objects', async () => {
    const sample = join(dir, 'fx', 'sample');
    const sources = readdirSync(join(sample, 'src')).filter((f) => f.endsWith('.c'));
    for (const opt of ['-O0', '-O2']) {
      for (const source of sources) await compare('clang', ['-std=c11', opt, '-Wall', '-Wextra', '-Iinclude', '-DSAMPLE_BUILD=1', '-c', `src/${source}`], sample);
    }
    expect((await stats()).jobs.remote).toBe(2 * sources.length);
  });

  it('compiles the C++ fixture, absolute paths and -x c++ into identical objects', async () => {
    const cxx = join(dir, 'fx', 'cxx');
    for (const source of readdirSync(join(cxx, 'src'))) {
      await compare('clang++', ['-std=c++17', '-O2', '-Iinclude', '-c', join(cxx, 'src', source)], cxx);
    }
    await compare('clang', ['-x', 'c++', '-std=c++17', '-O1', '-c', join(dir, 'fx', 'single', 'hello.c')], dir);
  });

  it('passes on clang diagnostics exactly, errors included', async () => {
    const single = join(dir, 'fx', 'single');
    await compare('clang', ['-Wall', '-Wextra', '-c', 'warn.c'], single);
    await compare('clang', ['-Wall', '-c', 'error.c'], single);
    await compare('clang', ['-Wall', '-Wextra', '-Werror', '-Wimplicit-fallthrough', '-c', 'fallthrough.c'], single);
  });

  it('keeps clang -g local, with its reason counted', async () => {
    const before = await stats();
    const result = await run(LAUNCHER, ['clang', '-g', '-c', 'hello.c', '-o', join(dir, 'out', 'g.o')], { cwd: join(dir, 'fx', 'single'), env });
    expect(result.code, result.stderr).toBe(0);
    const after = await stats();
    expect(after.local['clang-debug-info']).toBe((before.local['clang-debug-info'] ?? 0) + 1);
    expect(after.jobs.remote).toBe(before.jobs.remote);
    execFileSync('clang', ['-g', '-c', 'hello.c', '-o', join(dir, 'out', 'g-local.o')], { cwd: join(dir, 'fx', 'single') });
    expect(readFileSync(join(dir, 'out', 'g.o')).equals(readFileSync(join(dir, 'out', 'g-local.o')))).toBe(true);
  });
});
