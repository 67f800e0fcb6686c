/**
 * What the user reads: the compiler's diagnostics through Ferry must be byte for byte a local
 * compile's, source excerpts included, whether files are named relative or absolute, in headers,
 * in colour, or in C++ template notes that point into system headers.
 */
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { idleJobDirs, leftoverFiles } from '../support/job-files';
import { CLI_MAIN, LAUNCHER, ROOT, run, startProcess, WORKER_MAIN, type Started } from '../support/processes';

let dir: string;
let worker: Started;
let env: NodeJS.ProcessEnv;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-diagnostics-'));
  cpSync(join(ROOT, 'test', 'fixtures', 'single'), join(dir, 'src'), { recursive: true });
  mkdirSync(join(dir, 'include'));
  writeFileSync(join(dir, 'include', 'helper.h'), 'static inline int helper(int a)\n{\n    int unused = a;\n    return 0;\n}\n');
  writeFileSync(join(dir, 'src', 'uses_header.c'), '#include "helper.h"\nint use(void) { return helper(1); }\n');
  writeFileSync(join(dir, 'src', 'missing_header.c'), '#include <stdio.h>\n#include "no_such_header.h"\nint x;\n');
  writeFileSync(join(dir, 'src', 'hash_warning.c'), '#warning "check this"\nint y;\n');
  writeFileSync(
    join(dir, 'src', 'template.cc'),
    '#include <vector>\n#include <string>\nint f() {\n  std::vector<int> v;\n  v.push_back(std::string("x"));\n  return v.size();\n}\n',
  );
  mkdirSync(join(dir, 'tmp'));
  worker = await startProcess(
    process.execPath,
    [WORKER_MAIN, '--listen', `unix:${join(dir, 'w.sock')}`, '--slots', '2', '--allow', 'gcc,g++', '--tmpdir', join(dir, 'tmp')],
    /listening on/,
  );
  env = {
    ...process.env,
    FERRY_RUNTIME_DIR: join(dir, 'run'),
    FERRY_STATE_DIR: join(dir, 'state'),
    FERRY_HOSTS: `w/2,direct=${join(dir, 'w.sock')}`,
  };
  delete env.NODE_EXTRA_CA_CERTS;
});

afterAll(async () => {
  await run(process.execPath, [CLI_MAIN, 'stop'], { env });
  await worker?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** Runs the same compile locally and through Ferry (in `cwd`), returns both results. */
async function both(compiler: string, args: string[], cwd = dir) {
  const local = await run(compiler, [...args, '-o', join(dir, 'local.o')], { cwd });
  const remote = await run(LAUNCHER, [compiler, ...args, '-o', join(dir, 'remote.o')], { cwd, env });
  return { local, remote };
}

describe('diagnostics through Ferry', () => {
  it.each([
    ['a syntax error, relative path', 'gcc', ['-Wall', '-c', 'src/error.c']],
    ['a syntax error, absolute path (as CMake names sources)', 'gcc', ['-Wall', '-c', '@ABS@/src/error.c']],
    ['warnings in a file with a space in its directory', 'gcc', ['-Wall', '-Wextra', '-c', 'src/dir with space/spaced.c']],
    ['-Wall -Wextra warnings', 'gcc', ['-Wall', '-Wextra', '-c', 'src/warn.c']],
    ['a warning inside a header (relative -I)', 'gcc', ['-Wall', '-Iinclude', '-c', 'src/uses_header.c']],
    ['a warning inside a header (absolute -I)', 'gcc', ['-Wall', '-I@ABS@/include', '-c', '@ABS@/src/uses_header.c']],
    ['fallthrough comments under -Werror', 'gcc', ['-Wall', '-Wextra', '-Werror', '-Wimplicit-fallthrough', '-c', 'src/fallthrough.c']],
    ['colours forced on', 'gcc', ['-fdiagnostics-color=always', '-Wall', '-Wextra', '-c', 'src/warn.c']],
    ['excerpts turned off', 'gcc', ['-fno-diagnostics-show-caret', '-Wall', '-Wextra', '-c', 'src/warn.c']],
    ['a C++ template error with notes in system headers', 'g++', ['-c', 'src/template.cc']],
    ['a missing header (the preprocessor fails here)', 'gcc', ['-c', 'src/missing_header.c']],
    ['a #warning (the preprocessor warns here, then the remote compile)', 'gcc', ['-Wall', '-c', 'src/hash_warning.c']],
  ])('%s', async (_name, compiler, rawArgs) => {
    const args = rawArgs.map((a) => a.replace('@ABS@', dir));
    const { local, remote } = await both(compiler, args);
    expect(remote.code).toBe(local.code);
    expect(remote.stdout).toBe(local.stdout);
    expect(remote.stderr).toBe(local.stderr);
    if (local.code === 0) expect(readFileSync(join(dir, 'remote.o')).equals(readFileSync(join(dir, 'local.o')))).toBe(true);
  });

  it('shows excerpts in the cases above (the comparison is not vacuous)', async () => {
    const { remote } = await both('gcc', ['-Wall', '-I' + join(dir, 'include'), '-c', join(dir, 'src', 'uses_header.c')]);
    expect(remote.stderr).toMatch(/helper\.h:3:9: warning: unused variable/);
    expect(remote.stderr).toMatch(/^    3 \|     int unused = a;$/m);
    const template = await both('g++', ['-c', 'src/template.cc']);
    expect(template.remote.stderr).toMatch(/\/usr\/include\/c\+\+\/\d+\/bits\/stl_vector\.h:\d+:\d+: note:/);
    expect(template.remote.stderr).toMatch(/^ +\d+ \|       push_back\(/m);
  });

  it('ran every one of these compiles remotely', async () => {
    const stats = JSON.parse((await run(process.execPath, [CLI_MAIN, 'stats', '--json'], { env })).stdout);
    expect(stats.jobs.local).toBe(0);
    expect(stats.jobs.remote).toBeGreaterThanOrEqual(12);
    const jobs = worker.output().split('\n').filter((l) => /^job /.test(l));
    // A job whose full-mode run printed diagnostics came again with -fdirectives-only, under its id.
    expect(new Set(jobs.map((l) => l.split(' ')[1])).size).toBe(stats.jobs.remote);
    expect(stats.jobs.exactReruns).toBeGreaterThan(0);
    expect(jobs.length).toBeGreaterThan(stats.jobs.remote);
    // Nothing of the jobs is left in the worker's job directories, mirrors included.
    expect(leftoverFiles(join(dir, 'tmp'))).toEqual([]);
    for (const job of idleJobDirs(join(dir, 'tmp'))) expect(readdirSync(join(dir, 'tmp', job))).toEqual(['out']);
  });
});

describe('response files through Ferry', () => {
  it('expands @file here and compiles remotely into the same object', async () => {
    writeFileSync(join(dir, 'flags.rsp'), '-O2 "-DGREETING=\\"hi there\\"" -Wall\n-c src/hello.c\n');
    const { local, remote } = await both('gcc', ['@flags.rsp']);
    expect(local.code).toBe(0);
    expect(remote.code, remote.stderr).toBe(0);
    expect(remote.stderr).toBe(local.stderr);
    expect(readFileSync(join(dir, 'remote.o')).equals(readFileSync(join(dir, 'local.o')))).toBe(true);
    const explain = await run(process.execPath, [CLI_MAIN, 'explain', '--json', 'gcc', '@flags.rsp'], { cwd: dir, env });
    expect(JSON.parse(explain.stdout)).toEqual({ decision: 'remote', reason: 'distributable' });
  });
});
