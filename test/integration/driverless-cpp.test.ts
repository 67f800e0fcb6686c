/**
 * Preprocessing without gcc's driver: the learnt cc1 command must write exactly what `gcc -E`
 * writes (the preprocessed text, the .d file, the messages) for names other than the ones it was
 * learnt from, and anything the learning does not model must keep the driver.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DriverTemplates, parseDriverOutput, shapeOf } from '../../coordinator/driver-template';
import { instantiate, parseCommandLine, runDriver, type DriverCommand, type RunDriver } from '../../proto/driver-commands';

describe('parseCommandLine (gcc -### quoting)', () => {
  it.each([
    [' /usr/lib/cc1 -E -quiet a.c', ['/usr/lib/cc1', '-E', '-quiet', 'a.c']],
    [' /x "-mtune=generic" -O2', ['/x', '-mtune=generic', '-O2']],
    [' /x -D "X=\\"a b\\""', ['/x', '-D', 'X="a b"']],
    [' /x "a\\\\b" "\\$HOME"', ['/x', 'a\\b', '$HOME']],
    [' /x ""', ['/x', '']],
  ])('%s', (line, expected) => expect(parseCommandLine(line)).toEqual(expected));

  it.each([[' /x "open'], [' /x "a"b'], ['   ']])('refuses %j', (line) => expect(parseCommandLine(line)).toBeUndefined());
});

describe('parseDriverOutput', () => {
  const head = 'Using built-in specs.\nCOLLECT_GCC=gcc\nTarget: x86_64-linux-gnu\ngcc version 12.2.0 (Debian 12.2.0-14)\n';
  it('takes the one cc1 command and the variables set before it', () => {
    const out = `${head}COLLECT_GCC_OPTIONS='-E'\n /usr/lib/gcc/x/12/cc1 -E -quiet a.c\nCOMPILER_PATH=/usr/lib\n`;
    expect(parseDriverOutput(out)).toEqual({ argv: ['/usr/lib/gcc/x/12/cc1', '-E', '-quiet', 'a.c'], env: ['COLLECT_GCC=gcc', "COLLECT_GCC_OPTIONS='-E'"] });
  });
  it.each([
    ['two commands', `${head} /usr/lib/cc1 -E a.c\n /usr/bin/as a.s\n`],
    ['not the compiler proper', `${head} /usr/bin/as -o a.o a.s\n`],
    ['a relative program', `${head} cc1 -E a.c\n`],
    ['a driver warning', `${head}gcc: warning: a.c: linker input file unused\n /usr/lib/cc1 -E a.c\n`],
    ['no command', head],
  ])('refuses %s', (_name, out) => expect(parseDriverOutput(out)).toBeUndefined());
});

describe('shapeOf', () => {
  it('replaces the source directory and stem and the dependency names', () => {
    const shape = shapeOf(['/usr/bin/gcc', '-O2', '-MD', '-MF', 'obj/a.d', '-MQ', 'obj/a.o', '-MTt', '-Wp,-MMD,w.d', '-E', '-fdirectives-only', 'src/sub/a.x.c'])!;
    expect(shape.values).toEqual(['obj/a.d', 'obj/a.o', 't', 'w.d', 'src/sub', 'a.x']);
    expect(shape.tokenArgv).toEqual([
      '/usr/bin/gcc', '-O2', '-MD', '-MF', 'QzFerry0zQ', '-MQ', 'QzFerry1zQ', '-MTQzFerry2zQ', '-Wp,-MMD,QzFerry3zQ', '-E', '-fdirectives-only', 'QzFerry4zQ/QzFerry5zQ.c',
    ]);
  });
  it('keeps an absolute directory absolute', () => {
    const shape = shapeOf(['/usr/bin/gcc', '-E', '/home/u/a.c'])!;
    expect(shape.tokenArgv[2]).toBe('/QzFerry0zQ/QzFerry1zQ.c');
    expect(shape.values).toEqual(['home/u', 'a']);
  });
  it.each([
    [['/usr/bin/gcc', '-v', '-E', 'a.c']],
    [['/usr/bin/gcc', '-save-temps', '-E', 'a.c']],
    [['/usr/bin/gcc', '-B/opt/x', '-E', 'a.c']],
    [['/usr/bin/gcc', '-specs=my.specs', '-E', 'a.c']],
    [['/usr/bin/gcc', '-E', 'noextension']],
    [['/usr/bin/gcc', '-E', 'a\nb.c']],
    [['/usr/bin/gcc', '-E', 'QzFerry0zQ.c']],
    [['/usr/bin/gcc', '-Wp,-MD,a.d,-MT,x', '-E', 'a.c']],
  ])('keeps the driver for %j', (argv) => expect(shapeOf(argv)).toBeUndefined());
});

describe('instantiate', () => {
  it('puts every name back, in arguments and variables', () => {
    const template: DriverCommand = { argv: ['/cc1', 'QzFerry0zQ/QzFerry1zQ.c', '-dumpbase', 'QzFerry1zQ.c', '-MF', 'QzFerry10zQ'], env: ["COLLECT_GCC_OPTIONS='-MF' 'QzFerry10zQ'"] };
    const values = ['d', 'a', '2', '3', '4', '5', '6', '7', '8', '9', 'x.d'];
    expect(instantiate(template, values)).toEqual({ argv: ['/cc1', 'd/a.c', '-dumpbase', 'a.c', '-MF', 'x.d'], env: ["COLLECT_GCC_OPTIONS='-MF' 'x.d'"] });
  });
});

describe('DriverTemplates', () => {
  const argvFor = (name: string) => ['/usr/bin/gcc', '-O2', '-E', '-fdirectives-only', name];
  const fakeDriver = (answer: (argv: readonly string[]) => string): { run: RunDriver; calls: string[][] } => {
    const calls: string[][] = [];
    return {
      calls,
      run: async (argv) => {
        calls.push([...argv]);
        return answer(argv);
      },
    };
  };
  const cc1Line = (argv: readonly string[]) => ` /usr/lib/gcc/x86_64-linux-gnu/12/cc1 -E -quiet ${argv[argv.length - 1]} -O2\n`;

  it('learns a shape from its second job, in the background, and fills in later jobs', async () => {
    const driver = fakeDriver(cc1Line);
    const templates = new DriverTemplates(driver.run);
    expect(templates.commandFor(argvFor('a.c'), '/w', {}, 'v1')).toBeUndefined();
    expect(driver.calls).toHaveLength(0);
    expect(templates.commandFor(argvFor('b.c'), '/w', {}, 'v1')).toBeUndefined();
    await templates.whenLearnt();
    expect(driver.calls).toHaveLength(2);
    expect(templates.commandFor(argvFor('c.c'), '/w', {}, 'v1')).toEqual({ argv: ['/usr/lib/gcc/x86_64-linux-gnu/12/cc1', '-E', '-quiet', 'c.c', '-O2'], env: [] });
    // Another working directory, another driver environment: other shapes.
    expect(templates.commandFor(argvFor('c.c'), '/elsewhere', {}, 'v1')).toBeUndefined();
    expect(templates.commandFor(argvFor('c.c'), '/w', { GCC_EXEC_PREFIX: '/opt/' }, 'v1')).toBeUndefined();
    // Another build of the driver (an upgrade): another shape.
    expect(templates.commandFor(argvFor('c.c'), '/w', {}, 'v2')).toBeUndefined();
    expect(templates.learnt).toBe(1);
  });

  it('keeps the driver when the placeholders do not account for what the driver made of the names', async () => {
    // A driver that derives something from the name this does not model (here: upper case).
    const driver = fakeDriver((argv) => ` /usr/lib/cc1 -E ${argv[argv.length - 1]} -aux ${argv[argv.length - 1].toUpperCase()}\n`);
    const lines: string[] = [];
    const templates = new DriverTemplates(driver.run, (line) => lines.push(line));
    templates.commandFor(argvFor('a.c'), '/w', {}, 'v1');
    templates.commandFor(argvFor('b.c'), '/w', {}, 'v1');
    await templates.whenLearnt();
    expect(templates.commandFor(argvFor('c.c'), '/w', {}, 'v1')).toBeUndefined();
    expect(templates.refused).toBe(1);
    expect(lines.join('\n')).toMatch(/keeps gcc's driver/);
    // Refused once: no more driver runs for that shape.
    templates.commandFor(argvFor('d.c'), '/w', {}, 'v1');
    await templates.whenLearnt();
    expect(driver.calls).toHaveLength(2);
  });

  it('keeps the driver when the driver cannot run, and says why', async () => {
    const lines: string[] = [];
    const templates = new DriverTemplates(async () => {
      throw new Error('spawn /usr/bin/gcc ENOENT');
    }, (line) => lines.push(line));
    templates.commandFor(argvFor('a.c'), '/w', {}, 'v1');
    templates.commandFor(argvFor('b.c'), '/w', {}, 'v1');
    await templates.whenLearnt();
    expect(templates.commandFor(argvFor('c.c'), '/w', {}, 'v1')).toBeUndefined();
    expect(lines.join('\n')).toMatch(/ENOENT/);
  });
});

/** The real thing: gcc's own -### and the learnt command run for other names, compared with gcc -E. */
describe('learnt commands against gcc -E', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-driverless-'));
    mkdirSync(join(dir, 'src', 'deep'), { recursive: true });
    mkdirSync(join(dir, 'inc'));
    mkdirSync(join(dir, 'obj'));
    writeFileSync(join(dir, 'inc', 'h.h'), '#define H_VALUE 7\n#include <stddef.h>\n');
    const c = (n: string) => `#include "h.h"\n#include <stdio.h>\n#ifdef FERRY_X\n#warning "FERRY_X is " FERRY_X\n#endif\nint ${n}(void) { return H_VALUE + __LINE__; }\n/* comment */ const char *${n}_file = __FILE__;\n`;
    for (const name of ['one', 'two', 'three.part']) {
      writeFileSync(join(dir, 'src', `${name}.c`), c(name.replace('.', '_')));
      writeFileSync(join(dir, 'src', 'deep', `${name}.cc`), `#include <vector>\n${c(name.replace('.', '_'))}int v_${name.replace('.', '_')}() { std::vector<int> v{1}; return v[0]; }\n`);
    }
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', LC_ALL: 'C' };
  /** Runs argv with stdout to a file, like the launcher does; returns the file's bytes, stderr and status. */
  const runInto = (argv: readonly string[], extraEnv: readonly string[], out: string) => {
    rmSync(out, { force: true });
    const vars = Object.fromEntries(extraEnv.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
    const r = spawnSync(argv[0], argv.slice(1), { cwd: dir, env: { ...env, ...vars }, encoding: 'buffer' });
    writeFileSync(out, r.stdout);
    return { text: readFileSync(out), stderr: r.stderr.toString(), status: r.status };
  };

  // Each case: the argv around the source (learnt from the first two names, checked on the third).
  const cases: Array<{ name: string; compiler: string; args: (src: string, obj: string) => string[]; sources: string[] }> = [
    { name: 'plain C', compiler: '/usr/bin/gcc', args: () => ['-O2', '-Iinc'], sources: ['src/one.c', 'src/two.c', 'src/three.part.c'] },
    {
      name: 'dependency file and target',
      compiler: '/usr/bin/gcc',
      args: (_s, obj) => ['-Iinc', '-MD', '-MF', `${obj}.d`, '-MQ', obj],
      sources: ['src/one.c', 'src/two.c', 'src/three.part.c'],
    },
    { name: '-Wp,-MD', compiler: '/usr/bin/gcc', args: (_s, obj) => ['-Iinc', `-Wp,-MD,${obj}.wd`], sources: ['src/one.c', 'src/two.c', 'src/three.part.c'] },
    { name: '-MMD joined -MF', compiler: '/usr/bin/gcc', args: (_s, obj) => ['-Iinc', '-MMD', `-MF${obj}.md`, `-MT${obj}`], sources: ['src/one.c', 'src/two.c', 'src/three.part.c'] },
    {
      name: 'defines with quotes and spaces, a forced include, a warning',
      compiler: '/usr/bin/gcc',
      args: () => ['-Iinc', '-DFERRY_X="a b c"', "-DQ=it's", '-include', 'inc/h.h', '-std=gnu11', '-fdiagnostics-color=always'],
      sources: ['src/one.c', 'src/two.c', 'src/three.part.c'],
    },
    { name: 'absolute sources', compiler: '/usr/bin/gcc', args: () => ['-Iinc', '-O0'], sources: ['ABS/src/one.c', 'ABS/src/two.c', 'ABS/src/three.part.c'] },
    { name: 'C++', compiler: '/usr/bin/g++', args: (_s, obj) => ['-Iinc', '-std=c++17', '-MD', '-MF', `${obj}.d`, '-MQ', obj], sources: ['src/deep/one.cc', 'src/deep/two.cc', 'src/deep/three.part.cc'] },
    { name: 'a source named ./x', compiler: '/usr/bin/gcc', args: () => ['-Iinc'], sources: ['./src/one.c', './src/two.c', './src/three.part.c'] },
  ];

  it.each(cases)('$name', async ({ compiler, args, sources }) => {
    const templates = new DriverTemplates(runDriver);
    const argvOf = (src: string) => {
      const source = src.replace('ABS', dir);
      const obj = `obj/${src.split('/').pop()}.o`;
      return [compiler, ...args(source, obj), '-E', '-fdirectives-only', source];
    };
    expect(templates.commandFor(argvOf(sources[0]), dir, env, 'gcc-12')).toBeUndefined();
    expect(templates.commandFor(argvOf(sources[1]), dir, env, 'gcc-12')).toBeUndefined();
    await templates.whenLearnt();
    expect(templates.learnt).toBe(1);
    const argv = argvOf(sources[2]);
    const command = templates.commandFor(argv, dir, env, 'gcc-12')!;
    expect(command.argv[0]).toMatch(/\/cc1(plus)?$/);
    expect(command.argv).toContain(argv[argv.length - 1]);

    const depFiles = () => ['obj/three.part.c.o.d', 'obj/three.part.c.o.wd', 'obj/three.part.c.o.md', 'obj/three.part.cc.o.d'].filter((f) => existsSync(join(dir, f)));
    const viaDriver = runInto(argv, [], join(dir, 'driver.i'));
    const driverDeps = depFiles().map((f) => [f, readFileSync(join(dir, f), 'utf8')]);
    for (const [f] of driverDeps) rmSync(join(dir, f));
    const direct = runInto(command.argv, command.env, join(dir, 'direct.i'));
    const directDeps = depFiles().map((f) => [f, readFileSync(join(dir, f), 'utf8')]);
    for (const [f] of directDeps) rmSync(join(dir, f));

    expect(viaDriver.status).toBe(0);
    expect(direct.status).toBe(0);
    expect(direct.text.length).toBeGreaterThan(1000);
    expect(direct.text.equals(viaDriver.text)).toBe(true);
    expect(direct.stderr).toBe(viaDriver.stderr);
    expect(directDeps).toEqual(driverDeps);
  });

  it('keeps the driver for -save-temps and for a driver that warns', async () => {
    const templates = new DriverTemplates(runDriver);
    const a = ['/usr/bin/gcc', '-Iinc', '-Wl,-z,now', '-E', '-fdirectives-only', 'src/one.c'];
    // Linker options with -E: the driver may warn about them, which the learnt command would lose.
    templates.commandFor(a, dir, env, 'gcc-12');
    templates.commandFor([...a.slice(0, -1), 'src/two.c'], dir, env, 'gcc-12');
    await templates.whenLearnt();
    const learnt = templates.commandFor([...a.slice(0, -1), 'src/three.part.c'], dir, env, 'gcc-12');
    // Either the driver printed nothing but the command (then the command must match gcc -E), or it kept the driver.
    if (learnt) {
      const viaDriver = runInto([...a.slice(0, -1), 'src/three.part.c'], [], join(dir, 'd2.i'));
      expect(runInto(learnt.argv, learnt.env, join(dir, 'x2.i')).text.equals(viaDriver.text)).toBe(true);
    } else {
      expect(templates.refused).toBe(1);
    }
    expect(templates.commandFor(['/usr/bin/gcc', '-save-temps', '-E', 'src/one.c'], dir, env, 'gcc-12')).toBeUndefined();
  });
});
