/**
 * The worker's compiles without gcc's driver (worker/compile-steps.ts): the learnt cc1 and as
 * commands, run for a job directory and output name other than the ones they were learnt from,
 * must write exactly the object the driver writes there, and whatever the learning does not
 * model must keep the driver.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ASSEMBLY_NAME, CompileTemplates, compileShape, parseCompileCommands, type CompileSteps, type DriverJob } from '../../worker/compile-steps';
import type { RunDriver } from '../../proto/driver-commands';

const head = 'Using built-in specs.\nCOLLECT_GCC=gcc\nTarget: x86_64-linux-gnu\ngcc version 12.2.0 (Debian 12.2.0-14)\n';
const job = (over: Partial<DriverJob> = {}): DriverJob => ({
  driver: '/usr/bin/gcc',
  driverVersion: 'sha',
  args: ['-O2', '-c'],
  output: 'x.o',
  input: 'source.i',
  jobDir: '/tmp/w/job-abc',
  env: { PATH: '/usr/bin:/bin' },
  ...over,
});

describe('compileShape', () => {
  it('stands placeholders for the job directory and the output name', () => {
    expect(compileShape(job({ output: 'obj/sub/a.b.o' }))).toEqual({ root: '/tmp/w', args: ['-O2', '-c'], output: 'QzFerry2zQ/QzFerry1zQ.o', values: ['job-abc', 'a.b', 'obj/sub'] });
    expect(compileShape(job())).toEqual({ root: '/tmp/w', args: ['-O2', '-c'], output: 'QzFerry1zQ.o', values: ['job-abc', 'x'] });
  });
  it.each([
    ['-pipe', job({ args: ['-pipe', '-c'] })],
    ['-save-temps', job({ args: ['-save-temps', '-c'] })],
    ['-v', job({ args: ['-v', '-c'] })],
    ['-B', job({ args: ['-B/opt/bin', '-c'] })],
    ['-flto', job({ args: ['-flto', '-c'] })],
    ['a placeholder in an argument', job({ args: ['-DQzFerry0zQ', '-c'] })],
    ['an output without extension', job({ output: 'x' })],
    ['an output named only by its extension', job({ output: '.o' })],
    ['a space in the output', job({ output: 'a b.o' })],
    ['a quote in the output', job({ output: "a'b.o" })],
    ['a .. in the output', job({ output: '../x.o' })],
    ['a job directory at the root', job({ jobDir: '/job-abc' })],
  ])('keeps the driver for %s', (_name, j) => expect(compileShape(j)).toBeUndefined());
});

describe('parseCompileCommands', () => {
  const cc1 = ' /usr/lib/gcc/x/12/cc1 -fpreprocessed /w/j/source.i -quiet -dumpbase x.i -O2 -o /w/j/ccAb12Cd.s';
  const opts = "COLLECT_GCC_OPTIONS='-O2' '-c' '-o' 'x.o'";
  it('takes cc1 and as, with the driver\'s temporary assembly replaced by the job directory\'s', () => {
    const steps = parseCompileCommands(`${head}${opts}\n${cc1}\n${opts}\n as --64 -o x.o /w/j/ccAb12Cd.s\nCOMPILER_PATH=/usr/lib\n`, '/w/j');
    expect(steps).toEqual({
      compiler: { argv: ['/usr/lib/gcc/x/12/cc1', '-fpreprocessed', '/w/j/source.i', '-quiet', '-dumpbase', 'x.i', '-O2', '-o', `/w/j/${ASSEMBLY_NAME}`], env: ['COLLECT_GCC=gcc', opts] },
      assembler: { argv: ['as', '--64', '-o', 'x.o', `/w/j/${ASSEMBLY_NAME}`], env: ['COLLECT_GCC=gcc', opts] },
    });
  });
  it.each([
    ['objcopy after as (-gsplit-dwarf)', `${head}${cc1}\n as -o x.o /w/j/ccAb12Cd.s\n objcopy --extract-dwo x.o x.dwo\n`],
    ['one command (-S)', `${head}${cc1}\n`],
    ['as not reading cc1\'s output last', `${head}${cc1}\n as /w/j/ccAb12Cd.s -o x.o\n`],
    ['the assembly outside the temporary directory', `${head} /usr/lib/gcc/x/12/cc1 -o /elsewhere/ccAb12Cd.s\n as -o x.o /elsewhere/ccAb12Cd.s\n`],
    ['the assembly named twice', `${head} /usr/lib/gcc/x/12/cc1 -auxbase /w/j/ccAb12Cd.s -o /w/j/ccAb12Cd.s\n as -o x.o /w/j/ccAb12Cd.s\n`],
    ['a relative cc1', `${head} cc1 -o /w/j/ccAb12Cd.s\n as -o x.o /w/j/ccAb12Cd.s\n`],
    ['another second program', `${head}${cc1}\n ld -o x.o /w/j/ccAb12Cd.s\n`],
    ['a driver warning', `${head}gcc: warning: something\n${cc1}\n as -o x.o /w/j/ccAb12Cd.s\n`],
  ])('refuses %s', (_name, out) => expect(parseCompileCommands(out, '/w/j')).toBeUndefined());
});

describe('CompileTemplates', () => {
  const fakeDriver = (answer: (argv: readonly string[], env: NodeJS.ProcessEnv) => string): { run: RunDriver; calls: string[][] } => {
    const calls: string[][] = [];
    return {
      calls,
      run: async (argv, _cwd, env) => {
        calls.push([...argv]);
        return answer(argv, env);
      },
    };
  };
  const answer = (argv: readonly string[], env: NodeJS.ProcessEnv) => {
    const output = argv[argv.indexOf('-o') + 1];
    const stem = output.replace(/^.*\//, '').replace(/\.o$/, '');
    return `${head} /usr/lib/gcc/x/12/cc1 -fpreprocessed ${argv[argv.length - 1]} -dumpbase ${stem}.i -o ${env.TMPDIR}/ccQwErTy.s\n as --64 -o ${output} ${env.TMPDIR}/ccQwErTy.s\n`;
  };

  it('learns a shape from its second job, in the background, and fills in later jobs', async () => {
    const driver = fakeDriver(answer);
    const lines: string[] = [];
    const templates = new CompileTemplates((l) => lines.push(l), driver.run, async () => '/usr/bin/as');
    expect(templates.stepsFor(job())).toBeUndefined();
    expect(driver.calls).toHaveLength(0);
    expect(templates.stepsFor(job())).toBeUndefined();
    await templates.whenLearnt();
    expect(templates.learnt).toBe(1);
    expect(lines.join('\n')).toMatch(/run cc1 and as without gcc's driver/);
    const steps = templates.stepsFor(job({ jobDir: '/tmp/w/job-xyz', output: 'y.o' }))!;
    expect(steps.compiler.argv).toEqual(['/usr/lib/gcc/x/12/cc1', '-fpreprocessed', '/tmp/w/job-xyz/source.i', '-dumpbase', 'y.i', '-o', `/tmp/w/job-xyz/${ASSEMBLY_NAME}`]);
    expect(steps.assembler.argv).toEqual(['/usr/bin/as', '--64', '-o', 'y.o', `/tmp/w/job-xyz/${ASSEMBLY_NAME}`]);
    // Another shape (other arguments) is learnt on its own.
    expect(templates.stepsFor(job({ args: ['-O0', '-c'] }))).toBeUndefined();
  });

  it('keeps the driver when the placeholders do not account for what the driver made of the names', async () => {
    // A driver that puts the job directory's name somewhere the placeholders are not.
    const driver = fakeDriver((argv, env) => answer(argv, env).replace(' -dumpbase', ` -I/fixed/${env.TMPDIR!.includes('QzFerry') ? 'a' : 'b'} -dumpbase`));
    const lines: string[] = [];
    const templates = new CompileTemplates((l) => lines.push(l), driver.run, async () => '/usr/bin/as');
    templates.stepsFor(job());
    templates.stepsFor(job());
    await templates.whenLearnt();
    expect(templates.stepsFor(job())).toBeUndefined();
    expect(templates.refused).toBe(1);
    expect(lines.join('\n')).toMatch(/keep gcc's driver: its commands name the job's files where the placeholders do not account for them/);
  });

  it('keeps the driver when the driver cannot run, or as cannot be found, and says why', async () => {
    const failing: RunDriver = async () => {
      throw new Error('spawn /usr/bin/gcc ENOENT');
    };
    const lines: string[] = [];
    const templates = new CompileTemplates((l) => lines.push(l), failing, async () => '/usr/bin/as');
    templates.stepsFor(job());
    templates.stepsFor(job());
    await templates.whenLearnt();
    expect(templates.stepsFor(job())).toBeUndefined();
    expect(lines.join('\n')).toMatch(/keep gcc's driver: spawn \/usr\/bin\/gcc ENOENT/);

    const noAs = new CompileTemplates((l) => lines.push(l), fakeDriver(answer).run, async () => undefined);
    noAs.stepsFor(job());
    noAs.stepsFor(job());
    await noAs.whenLearnt();
    expect(noAs.stepsFor(job())).toBeUndefined();
    expect(noAs.refused).toBe(1);
  });
});

describe('learnt commands against gcc -c', () => {
  let root: string;
  const C = 'struct s { int a; double b; };\nstatic int twice(int x) { return 2 * x; }\nint f(struct s *p) { return twice(p->a) + (int)p->b; }\n';
  const CXX = '#include <vector>\nint total(const std::vector<int> &v) { int t = 0; for (int x : v) t += x; return t; }\n';

  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'ferry-steps-'));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  /** A job directory as the worker makes it: `<root>/<name>/{source.<ext>,out/}`. */
  function jobDir(name: string, source: string, ext: string): string {
    const dir = join(root, name);
    mkdirSync(join(dir, 'out'), { recursive: true });
    writeFileSync(join(dir, `source.${ext}`), source);
    return dir;
  }

  function runSteps(steps: CompileSteps, dir: string, env: Record<string, string>) {
    for (const step of [steps.compiler, steps.assembler]) {
      const stepEnv = { ...env, TMPDIR: dir, ...Object.fromEntries(step.env.map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)])) };
      const r = spawnSync(step.argv[0], step.argv.slice(1), { cwd: join(dir, 'out'), env: stepEnv, encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
    }
  }

  /** cc1 and as started together, the assembly going through the named pipe at `<dir>/assembly.s`. */
  async function runPiped(steps: CompileSteps, dir: string, env: Record<string, string>) {
    const runs = [steps.assembler, steps.compiler].map((step) => {
      const stepEnv = { ...env, TMPDIR: dir, ...Object.fromEntries(step.env.map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)])) };
      const child = spawn(step.argv[0], step.argv.slice(1), { cwd: join(dir, 'out'), env: stepEnv, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      return new Promise<void>((resolve, reject) => {
        child.once('error', reject);
        child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${step.argv[0]} exited ${code}: ${stderr}`))));
      });
    });
    await Promise.all(runs);
  }

  it.each([
    ['gcc', 'c', ['-O2', '-c'], 'x.o'],
    ['gcc', 'c', ['-O0', '-g', '-c'], 'obj/dbg.o'],
    ['gcc', 'c', ['-O2', '-g', '-fdirectives-only', '-c'], 'd.o'],
    ['gcc', 'c', ['-Os', '-fPIC', '-ffunction-sections', '-fdata-sections', '-std=c11', '-c'], 'pic.o'],
    ['gcc', 'c', ['-O2', '-Wa,--noexecstack', '-march=x86-64-v2', '-c'], 'a/b/wa.o'],
    ['g++', 'cpp', ['-O1', '-std=c++17', '-c'], 'cxx.o'],
  ])('%s %j -o %s: the object the driver writes', async (compiler, lang, args, output) => {
    const driver = spawnSync('sh', ['-c', `command -v ${compiler}`], { encoding: 'utf8' }).stdout.trim();
    const ext = lang === 'c' ? 'i' : 'ii';
    const pre = spawnSync(compiler, [...args.filter((a) => a !== '-c'), '-E', '-x', lang === 'c' ? 'c' : 'c++', '-'], { input: lang === 'c' ? C : CXX, encoding: 'utf8' });
    expect(pre.status, pre.stderr).toBe(0);
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C' };
    const tag = `${compiler}-${args.join('')}`.replace(/[^A-Za-z0-9]/g, '');
    const make = (n: string): DriverJob => ({ driver, driverVersion: 'v', args, output, input: `source.${ext}`, jobDir: jobDir(`job-${tag}${n}`, pre.stdout, ext), env });
    const templates = new CompileTemplates();
    templates.stepsFor(make('1'));
    templates.stepsFor(make('2'));
    await templates.whenLearnt();
    expect(templates.learnt).toBe(1);

    // Another job directory and another output name than the ones learnt from.
    const other = { ...make('3'), output: output.replace(/[^/]+\.o$/, 'other.o') };
    const dir = other.jobDir;
    mkdirSync(join(dir, 'out', output.replace(/[^/]*$/, '')), { recursive: true });
    const viaDriver = spawnSync(driver, [...args, '-o', other.output, join(dir, other.input)], { cwd: join(dir, 'out'), env: { ...env, TMPDIR: dir }, encoding: 'utf8' });
    expect(viaDriver.status, viaDriver.stderr).toBe(0);
    const expected = readFileSync(join(dir, 'out', other.output));
    rmSync(join(dir, 'out', other.output));

    const steps = templates.stepsFor(other)!;
    expect(steps.compiler.argv).toContain(join(dir, ASSEMBLY_NAME));
    runSteps(steps, dir, env);
    expect(readFileSync(join(dir, 'out', other.output)).equals(expected)).toBe(true);

    // As the worker runs them when its exec helper can make named pipes: both at once, cc1 writing into as.
    rmSync(join(dir, 'out', other.output));
    rmSync(join(dir, ASSEMBLY_NAME));
    expect(spawnSync('mkfifo', [join(dir, ASSEMBLY_NAME)]).status).toBe(0);
    await runPiped(steps, dir, env);
    expect(readFileSync(join(dir, 'out', other.output)).equals(expected)).toBe(true);
  });

  it.each([
    ['-gsplit-dwarf (objcopy runs after as)', ['-O2', '-g', '-gsplit-dwarf', '-c']],
    ['-S (no assembler)', ['-O2', '-S']],
  ])('keeps the driver for %s', async (_name, args) => {
    const lines: string[] = [];
    const templates = new CompileTemplates((l) => lines.push(l));
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
    const make = (n: string): DriverJob => ({ driver: '/usr/bin/gcc', driverVersion: 'v', args, output: 'k.o', input: 'source.i', jobDir: jobDir(`job-keep${n}${args.length}`, C, 'i'), env });
    templates.stepsFor(make('1'));
    templates.stepsFor(make('2'));
    await templates.whenLearnt();
    expect(templates.stepsFor(make('3'))).toBeUndefined();
    expect(templates.refused).toBe(1);
    expect(lines.join('\n')).toMatch(/keep gcc's driver: its -### output is not one cc1 and one as command/);
  });
});
