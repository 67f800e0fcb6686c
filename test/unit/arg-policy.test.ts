import { describe, expect, it } from 'vitest';
import { FerryError } from '../../proto/errors';
import { checkJobArgs, findRefusal, sysrootAllowed } from '../../worker/arg-policy';

const none = { allowedSysroots: [] };
const arm = { allowedSysroots: ['/opt/sysroots/arm'] };

describe('worker argument policy', () => {
  it.each([
    [['-c']],
    [['-S']],
    [['-O2', '-c', '-fdirectives-only']],
    [['-c', '-g', '-fdebug-prefix-map=/tmp/job=/src', '-ffile-prefix-map=/a=/b', '-fmacro-prefix-map=/a=/b']],
    [['-c', '-fdebug-compilation-dir=/home/u/src', '-fdiagnostics-color=always', '-Wall', '-Werror=format']],
    [['-c', '-std=c++17', '-fPIC', '-march=x86-64-v2', '-xc++', '-gsplit-dwarf', '-fno-working-directory']],
    [['-c', '-Wa,--noexecstack', '-fopt-info-vec', '-fmodulo-sched', '--param=max-inline-insns-single=10']],
    [['-c', '--sysroot=/opt/sysroots/arm'], arm],
    [['-c', '--sysroot', '/opt/sysroots/arm/'], arm],
    [['-c', '-isysroot', '/opt/sysroots/x/../arm'], arm],
    [['-c', '-isysroot/opt/sysroots/arm'], arm],
  ])('accepts %j', (args, policy = none) => {
    expect(findRefusal(args, policy)).toBeUndefined();
  });

  it.each([
    // [arguments, the argument named, the reason]
    [['-c', '-fplugin=./evil.so'], '-fplugin=./evil.so', /loads a compiler plugin/],
    [['-c', '-fplugin-arg-evil-x=1'], '-fplugin-arg-evil-x=1', /loads a compiler plugin/],
    [['-c', '-iplugindir=/tmp'], '-iplugindir=/tmp', /plugins are loaded from/],
    [['-c', '-fpass-plugin=/tmp/p.so'], '-fpass-plugin=/tmp/p.so', /LLVM pass plugin/],
    [['-c', '-Xclang', '-load'], '-Xclang', /-load runs code/],
    [['-c', '-mllvm', '-info-output-file=/tmp/x'], '-mllvm', /LLVM/],
    [['-c', '-specs=/tmp/evil.specs'], '-specs=/tmp/evil.specs', /specs file/],
    [['-c', '--specs=x'], '--specs=x', /specs file/],
    [['-c', '-B/tmp/bin'], '-B/tmp/bin', /run programs from another directory/],
    [['-c', '-B', '/tmp'], '-B', /run programs from another directory/],
    [['-c', '-wrapper', 'gdb,--args'], '-wrapper', /under another program/],
    [['-c', '-fdump-tree-all'], '-fdump-tree-all', /dumps/],
    [['-c', '-fdump-rtl-expand=/tmp/x'], '-fdump-rtl-expand=/tmp/x', /dumps/],
    [['-c', '-save-temps'], '-save-temps', /intermediate files/],
    [['-c', '-save-temps=obj'], '-save-temps=obj', /intermediate files/],
    [['-c', '--save-temps'], '--save-temps', /intermediate files/],
    [['-c', '--sysroot=/'], '--sysroot=/', /system root this worker does not allow \(none is allowed here; allowed_sysroots\)/],
    [['-c', '--sysroot', '/home/alice'], '--sysroot /home/alice', /does not allow/],
    [['-c', '-isysroot', '/opt/sysroots/arm/../../../etc'], '-isysroot /opt/sysroots/arm/../../../etc', /allowed here: \/opt\/sysroots\/arm/, arm],
    [['-c', '--sysroot=opt/sysroots/arm'], '--sysroot=opt/sysroots/arm', /does not allow/, arm],
    [['-c', '-isysroot'], '-isysroot', /names no system root/],
    [['-c', '@/tmp/args'], '@/tmp/args', /response file/],
    [['-c', '-o', '/etc/passwd'], '-o', /output path/],
    [['-c', '-o/etc/passwd'], '-o/etc/passwd', /output path/],
    [['-c', '/etc/shadow'], '/etc/shadow', /not an option/],
    [['-c', 'extra.c'], 'extra.c', /not an option/],
    [['-c', '-'], '-', /standard input/],
    [['-c', '-fprofile-generate=/tmp/prof'], '-fprofile-generate=/tmp/prof', /profile data/],
    [['-c', '-fprofile-use'], '-fprofile-use', /profile data/],
    [['-c', '-fprofile-arcs'], '-fprofile-arcs', /profile data/],
    [['-c', '-fprofile-instr-generate'], '-fprofile-instr-generate', /profile data/],
    [['-c', '-fauto-profile=/tmp/p'], '-fauto-profile=/tmp/p', /profile data/],
    [['-c', '-ftest-coverage'], '-ftest-coverage', /profile data/],
    [['-c', '--coverage'], '--coverage', /coverage files/],
    [['-c', '-Wa,-adhln=/tmp/listing'], '-Wa,-adhln=/tmp/listing', /listing/],
    [['-c', '-Wa,--noexecstack,-al'], '-Wa,--noexecstack,-al', /listing/],
    [['-c', '-Wa,--MD,/tmp/d'], '-Wa,--MD,/tmp/d', /listing or another file/],
    [['-c', '-Xassembler', '-a'], '-Xassembler', /assembler/],
    [['-c', '-MD'], '-MD', /dependency file/],
    [['-c', '-MMD'], '-MMD', /dependency file/],
    [['-c', '-MF/tmp/x.d'], '-MF/tmp/x.d', /dependency file/],
    [['-c', '-MJ', '/tmp/db.json'], '-MJ', /dependency file/],
    [['-c', '-Wp,-MD,/tmp/x.d'], '-Wp,-MD,/tmp/x.d', /preprocessor/],
    [['-c', '-Xpreprocessor', '-MD'], '-Xpreprocessor', /preprocessor/],
    [['-c', '-fcallgraph-info=su'], '-fcallgraph-info=su', /extra files/],
    [['-c', '-fstack-usage'], '-fstack-usage', /extra files/],
    [['-c', '-aux-info', '/tmp/protos'], '-aux-info', /prototypes/],
    [['-c', '-dumpdir', '/tmp/'], '-dumpdir', /auxiliary files/],
    [['-c', '-dumpbase', '/tmp/x'], '-dumpbase', /auxiliary files/],
    [['-c', '-dumpbase-ext', '.c'], '-dumpbase-ext', /auxiliary files/],
    [['-c', '-dumpmachine'], '-dumpmachine', /query/],
    [['-c', '-fsave-optimization-record'], '-fsave-optimization-record', /optimisation record/],
    [['-c', '-foptimization-record-file=/tmp/r'], '-foptimization-record-file=/tmp/r', /optimisation record/],
    [['-c', '-fopt-info-vec=/tmp/notes'], '-fopt-info-vec=/tmp/notes', /optimisation notes/],
    [['-c', '-ftime-trace=/tmp/t.json'], '-ftime-trace=/tmp/t.json', /trace file/],
    [['-c', '-fcrash-diagnostics-dir=/tmp'], '-fcrash-diagnostics-dir=/tmp', /outside the job/],
    [['-c', '-fdiagnostics-add-output=sarif:file=/tmp/x'], '-fdiagnostics-add-output=sarif:file=/tmp/x', /diagnostics to a file/],
    [['-c', '-fmodules', '-fmodules-cache-path=/tmp/mc'], '-fmodules', /module cache/],
    [['-c', '-fmodule-mapper=|/tmp/evil'], '-fmodule-mapper=|/tmp/evil', /can run a program/],
    [['-c', '-Wl,-plugin=/tmp/p.so'], '-Wl,-plugin=/tmp/p.so', /linker/],
    [['-c', '-Xlinker', '-plugin'], '-Xlinker', /linker/],
    [['-c', '-E'], '-E', /preprocesses only/],
    [['-c', 'a\0b'], 'a\\u0000b', /NUL byte/],
  ])('refuses %j, naming %s', (args, named, why, policy = none) => {
    const refusal = findRefusal(args, policy);
    expect(refusal?.arg).toBe(named);
    expect(refusal?.message).toMatch(why);
    expect(refusal?.message).toContain(`argument "${named}"`);
  });

  it.each([
    [[], /neither -c nor -S/],
    [['-O2', '-Wall'], /neither -c nor -S: the worker compiles, it does not link/],
    [Array(5000).fill('-c'), /5000 arguments, more than the 4096/],
    [['-c', `-D${'x'.repeat(2 << 20)}`], /bytes, more than the 1048576/],
  ])('refuses the whole line %#', (args, why) => {
    expect(findRefusal(args, none)?.message).toMatch(why);
  });

  it('throws a FerryError whose hint says what to do', () => {
    const call = (args: string[], policy = none) => {
      try {
        checkJobArgs(args, policy);
      } catch (err) {
        return err as FerryError;
      }
      return undefined;
    };
    expect(call(['-c'])).toBeUndefined();
    const plugin = call(['-c', '-fplugin=x.so'])!;
    expect(plugin).toBeInstanceOf(FerryError);
    expect(plugin.code).toBe('forbidden-argument');
    expect(plugin.message).toBe('argument "-fplugin=x.so" is refused: it loads a compiler plugin');
    expect(plugin.hint).toMatch(/Compile this file locally/);
    expect(call(['-c', '--sysroot=/srv/root'])!.hint).toMatch(/allowed_sysroots in the worker's worker.conf/);
  });

  it.each([
    ['/opt/sysroots/arm', true],
    ['/opt/sysroots/arm/', true],
    ['/opt/sysroots//arm', true],
    ['/opt/sysroots/arm/usr', false],
    ['/opt/sysroots', false],
    ['opt/sysroots/arm', false],
  ])('sysroot %s allowed under [/opt/sysroots/arm]: %s', (path, allowed) => {
    expect(sysrootAllowed(path, ['/opt/sysroots/arm'])).toBe(allowed);
  });
});
