/**
 * Debug information of objects built through Ferry (launcher → coordinator → worker on a Unix
 * socket → gcc in the worker's private directory) against plain local compiles: the DWARF must
 * describe the source exactly as a local build's does (line and column tables, file names,
 * DW_AT_comp_dir = the initiator's working directory, DW_AT_name = the source as given); the only
 * difference allowed is DW_AT_producer, which records `-fdirectives-only` (facts.md part 3).
 */
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { idleJobDirs, leftoverFiles } from '../support/job-files';
import { compareObjects, compileUnits, debugDump } from '../support/objdiff';
import { CLI_MAIN, LAUNCHER, ROOT, run, startProcess, WORKER_MAIN, type Started } from '../support/processes';

const FIXTURES = join(ROOT, 'test', 'fixtures');
const built = existsSync(LAUNCHER) && existsSync(WORKER_MAIN) && existsSync(CLI_MAIN);

let work: string;
let workerTmp: string;
let worker: Started | undefined;
let env: NodeJS.ProcessEnv;
/** Compiles sent through Ferry that must have run on the worker. */
let remoteJobs = 0;
let counter = 0;

interface Project {
  label: string;
  compiler: 'gcc' | 'g++';
  fixture: string;
  sources: string[];
  baseFlags: string[];
}

const PROJECTS: Project[] = [
  // xalloc.c uses __FILE__/__LINE__ through log.h; hashtable.c has static inline header functions.
  { label: 'C', compiler: 'gcc', fixture: 'sample', sources: ['src/xalloc.c', 'src/hashtable.c'], baseFlags: ['-Iinclude', '-std=c11'] },
  // ranking.cpp: lambdas and templates; text.cc: iostream and string.
  { label: 'C++', compiler: 'g++', fixture: 'cxx', sources: ['src/ranking.cpp', 'src/text.cc'], baseFlags: ['-Iinclude', '-std=c++17'] },
];

/** Debug flag sets; `<dir>` is the project's directory (the initiator's working directory). */
const FLAG_SETS: string[][] = [
  ['-g'],
  ['-g1'],
  ['-g2'],
  ['-O2', '-g'],
  ['-O0', '-g'],
  ['-g', '-ffile-prefix-map=<dir>=.'],
  ['-g', '-fdebug-prefix-map=<dir>=/src'],
  ['-gdwarf-4'],
  ['-g', '-gz'],
  // Without the working-directory line marker in the preprocessed output, gcc would take
  // DW_AT_comp_dir from its own working directory, the worker's job directory: the coordinator keeps
  // -fno-working-directory away from the preprocessor.
  ['-g', '-fno-working-directory'],
];

function projectDir(project: Project): string {
  return join(work, project.fixture);
}

/** What DW_AT_comp_dir and DW_AT_name must be: the working directory and the source as given, remapped as gcc remaps them. */
function expectedUnit(dir: string, flags: string[], source: string): { compDir: string; name: string } {
  for (const flag of flags) {
    const m = /^-f(?:file|debug)-prefix-map=(.*)=(.*)$/.exec(flag);
    if (m && (dir === m[1] || dir.startsWith(`${m[1]}/`))) {
      const mapped = m[2] + dir.slice(m[1].length);
      const name = source.startsWith(`${m[1]}/`) ? m[2] + source.slice(m[1].length) : source;
      return { compDir: mapped, name };
    }
  }
  return { compDir: dir, name: source };
}

/** Compiles `source` locally and through Ferry with the same flags; returns both object paths. */
async function compileBoth(project: Project, flags: string[], source: string, dir = projectDir(project)): Promise<{ local: string; remote: string }> {
  const n = counter++;
  const local = join('obj', `local-${n}.o`);
  const remote = join('obj', `ferry-${n}.o`);
  const args = [...project.baseFlags, ...flags, '-c', source];
  const plain = await run(project.compiler, [...args, '-o', local], { cwd: dir, timeoutMs: 120_000 });
  expect(plain.code, plain.stderr).toBe(0);
  const through = await run(LAUNCHER, [project.compiler, ...args, '-o', remote], { cwd: dir, env, timeoutMs: 120_000 });
  expect(through.code, through.stderr).toBe(0);
  expect(through.stderr).toBe(plain.stderr);
  remoteJobs++;
  return { local: join(dir, local), remote: join(dir, remote) };
}

function checkObjects(project: Project, flags: string[], source: string, objects: { local: string; remote: string }, dir = projectDir(project)): void {
  const what = `${project.compiler} ${flags.join(' ')} ${source}`;
  const result = compareObjects(objects.local, objects.remote);
  // The DWARF describes the same source in the same way; only DW_AT_producer may differ.
  expect(result.differences, `${what}: differences beyond DW_AT_producer`).toEqual([]);
  if (!result.identical) {
    expect(result.producers?.remote.every((p) => p.includes('-fdirectives-only')), what).toBe(true);
  }
  const expected = expectedUnit(dir, flags, source);
  for (const objectPath of [objects.local, objects.remote]) {
    const units = compileUnits(objectPath);
    expect(units.length, what).toBeGreaterThanOrEqual(1);
    expect(units[0].compDir, `${what}: DW_AT_comp_dir of ${objectPath}`).toBe(expected.compDir);
    expect(units[0].name, `${what}: DW_AT_name of ${objectPath}`).toBe(expected.name);
  }
  // Nothing of the worker's private directory or its input name leaks into the object.
  const dump = debugDump(objects.remote);
  expect(dump, what).not.toContain(workerTmp);
  expect(dump, what).not.toMatch(/\bsource\.ii?\b/);
}

async function stats(): Promise<{ jobs: { remote: number; local: number }; local: Record<string, number>; hosts: Record<string, { jobs: number }> }> {
  const result = await run(process.execPath, [CLI_MAIN, 'stats', '--json'], { env });
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout);
}

describe.skipIf(!built)('debug information of objects compiled through Ferry', () => {
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'ferry-debug-info-'));
    workerTmp = join(work, 'worker-tmp');
    mkdirSync(workerTmp);
    for (const project of PROJECTS) {
      cpSync(join(FIXTURES, project.fixture), projectDir(project), { recursive: true });
      rmSync(join(projectDir(project), 'build'), { recursive: true, force: true });
      mkdirSync(join(projectDir(project), 'obj'));
    }
    const socket = join(work, 'w.sock');
    worker = await startProcess(
      process.execPath,
      [WORKER_MAIN, '--listen', `unix:${socket}`, '--slots', '2', '--allow', 'gcc,g++', '--tmpdir', workerTmp],
      /listening on/,
    );
    env = {
      ...process.env,
      FERRY_RUNTIME_DIR: join(work, 'run'),
      FERRY_STATE_DIR: join(work, 'state'),
      FERRY_HOSTS: `w/2,direct=${socket}`,
    };
    delete env.FERRY_DISABLE;
  });

  afterAll(async () => {
    try {
      if (env && existsSync(join(work, 'run'))) await run(process.execPath, [CLI_MAIN, 'stop'], { env, timeoutMs: 30_000 });
    } finally {
      await worker?.stop();
      if (work) rmSync(work, { recursive: true, force: true });
    }
  });

  for (const project of PROJECTS) {
    describe(`${project.label} (${project.compiler})`, () => {
      it.each(FLAG_SETS.map((flags) => [flags.join(' ')]))('%s: DWARF as a local build, relative source', async (label) => {
        const flags = label.split(' ').map((f) => f.replace('<dir>', projectDir(project)));
        for (const source of project.sources) checkObjects(project, flags, source, await compileBoth(project, flags, source));
      });

      it.each([['-g'], ['-O2 -g'], ['-g -ffile-prefix-map=<dir>=.']])('%s: DWARF as a local build, absolute source (as CMake passes it)', async (label) => {
        const flags = label.split(' ').map((f) => f.replace('<dir>', projectDir(project)));
        const source = join(projectDir(project), project.sources[0]);
        checkObjects(project, flags, source, await compileBoth(project, flags, source));
      });
    });
  }

  it('-Wall -Wextra -g with warnings (the worker compiles again for source excerpts): the object of the first compile, as a local one', async () => {
    const project = PROJECTS[0];
    const dir = join(work, 'single');
    cpSync(join(FIXTURES, 'single'), dir, { recursive: true });
    mkdirSync(join(dir, 'obj'), { recursive: true });
    for (const flags of [['-Wall', '-Wextra', '-g'], ['-Wall', '-Wextra', '-O2', '-g']]) {
      const objects = await compileBoth(project, flags, 'warn.c', dir);
      checkObjects(project, flags, 'warn.c', objects, dir);
    }
  });

  it('-gsplit-dwarf: the object and its .dwo come back under the names a local build gives them', async () => {
    for (const project of PROJECTS) {
      const dir = projectDir(project);
      for (const flags of [['-g', '-gsplit-dwarf'], ['-g', '-gsplit-dwarf', '-gdwarf-4']]) {
        const what = `${project.compiler} ${flags.join(' ')}`;
        // The .dwo's name is recorded in the object, so both builds use the same output name.
        const args = [...project.baseFlags, ...flags, '-O0', '-c', project.sources[0], '-o', 'obj/split.o'];
        const plain = await run(project.compiler, args, { cwd: dir });
        expect(plain.code, plain.stderr).toBe(0);
        for (const ext of ['o', 'dwo']) rmSync(join(dir, `obj/split-local.${ext}`), { force: true });
        cpSync(join(dir, 'obj/split.o'), join(dir, 'obj/split-local.o'));
        cpSync(join(dir, 'obj/split.dwo'), join(dir, 'obj/split-local.dwo'));
        rmSync(join(dir, 'obj/split.o'));
        rmSync(join(dir, 'obj/split.dwo'));
        const through = await run(LAUNCHER, [project.compiler, ...args], { cwd: dir, env });
        expect(through.code, through.stderr).toBe(0);
        remoteJobs++;
        expect(existsSync(join(dir, 'obj/split.dwo')), `${what}: no .dwo`).toBe(true);
        expect(compareObjects(join(dir, 'obj/split-local.o'), join(dir, 'obj/split.o')).differences, what).toEqual([]);
        expect(compareObjects(join(dir, 'obj/split-local.dwo'), join(dir, 'obj/split.dwo')).differences, `${what} (.dwo)`).toEqual([]);
        expect(compileUnits(join(dir, 'obj/split.o'))[0].dwoName, what).toBe('obj/split.dwo');
      }
    }
  });

  it('ran every one of those compiles on the worker', async () => {
    const s = await stats();
    expect(remoteJobs).toBeGreaterThan(0);
    expect(s.jobs.remote).toBe(remoteJobs);
    expect(s.jobs.local).toBe(0);
    expect(s.hosts.w.jobs).toBe(remoteJobs);
    const logged = (worker?.output() ?? '').split('\n').filter((line) => /^job \S+ .*: g(cc|\+\+) exit 0/.test(line));
    expect(logged.length).toBe(remoteJobs);
    // Nothing of any job is left in the worker's job directories.
    expect(leftoverFiles(workerTmp)).toEqual([]);
  });
});
