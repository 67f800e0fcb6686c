import { describe, expect, it } from 'vitest';
import { classify, impliedDepFile, impliedOutput } from '../../coordinator/classify';

/** [command line, expected decision: 'remote' or the local reason] */
const CASES: Array<[string, string]> = [
  // The common case, in its usual shapes.
  ['gcc -c a.c -o a.o', 'remote'],
  ['gcc -c a.c', 'remote'],
  ['gcc -o a.o -c a.c', 'remote'],
  ['gcc -c -oa.o a.c', 'remote'],
  ['g++ -c a.cc -o a.o', 'remote'],
  ['g++ -c a.cpp -o a.o', 'remote'],
  ['g++ -c a.cxx -o a.o', 'remote'],
  ['g++ -c a.C -o a.o', 'remote'],
  ['c++ -c a.c++ -o a.o', 'remote'],
  ['cc -c a.c -o a.o', 'remote'],
  ['gcc-12 -c a.c -o a.o', 'remote'],
  ['g++-12 -c a.cc -o a.o', 'remote'],
  ['x86_64-linux-gnu-gcc -c a.c -o a.o', 'remote'],
  ['x86_64-linux-gnu-g++-12 -c a.cc -o a.o', 'remote'],
  ['/usr/bin/gcc -c a.c -o a.o', 'remote'],
  ['gcc -S a.c -o a.s', 'remote'],
  ['gcc -c a.i -o a.o', 'remote'],
  ['g++ -c a.ii -o a.o', 'remote'],
  ['gcc -x c++ -c a.c -o a.o', 'remote'],
  ['gcc -xc -c a.txt -o a.o', 'remote'],
  ['gcc -x cpp-output -c a.txt -o a.o', 'remote'],
  ['gcc -c a.m -o a.o', 'remote'],
  ['gcc -c a.mm -o a.o', 'remote'],
  // Options of every route.
  ['gcc -Iinclude -I include -DX=1 -D Y -UZ -U W -c a.c -o a.o', 'remote'],
  ['gcc -include config.h -isystem /opt/inc -iquote q -idirafter d -c a.c -o a.o', 'remote'],
  ['gcc -O2 -g -Wall -Wextra -std=c11 -fPIC -pthread -c a.c -o a.o', 'remote'],
  ['gcc -MD -MF a.d -MT a.o -MP -c a.c -o a.o', 'remote'],
  ['gcc -MMD -c a.c -o a.o', 'remote'],
  ['gcc -MD -MQ "$(x)" -c a.c -o a.o', 'remote'],
  ['gcc -ffile-prefix-map=/src=. -fdebug-prefix-map=/a=/b -c a.c -o a.o', 'remote'],
  ['gcc -pipe -c a.c -o a.o', 'remote'],
  ['gcc --param=max-inline-insns-single=100 -c a.c -o a.o', 'remote'],
  ['gcc -fno-omit-frame-pointer -march=x86-64-v2 -c a.c -o a.o', 'remote'],
  ['gcc -c "dir with space/a.c" -o "dir with space/a.o"', 'remote'],
  // Not a compile.
  ['gcc a.o b.o -o prog', 'not-a-compile'],
  ['gcc a.c -o prog', 'not-a-compile'],
  ['gcc --version', 'not-a-compile'],
  ['gcc -v', 'not-a-compile'],
  ['gcc -dumpmachine', 'not-a-compile'],
  ['gcc -print-file-name=libc.so', 'not-a-compile'],
  ['gcc -###', 'not-a-compile'],
  ['gcc', 'not-a-compile'],
  ['gcc -shared a.o -o liba.so', 'not-a-compile'],
  // Preprocessing only.
  ['gcc -E a.c', 'preprocess-only'],
  ['gcc -E a.c -o a.i', 'preprocess-only'],
  ['gcc -M a.c', 'preprocess-only'],
  ['gcc -MM a.c', 'preprocess-only'],
  ['gcc -c -E a.c', 'preprocess-only'],
  // Sources.
  ['gcc -c', 'no-source'],
  ['gcc -c -o a.o', 'no-source'],
  ['gcc -c a.c b.c', 'multiple-sources'],
  ['gcc -c a.c b.cc -o x.o', 'multiple-sources'],
  ['gcc -c - -o a.o', 'stdin-source'],
  ['gcc -c a.c -o -', 'output-to-stdout'],
  ['gcc -c a.c -o /dev/null', 'output-to-stdout'],
  ['gcc -S a.c -o -', 'output-to-stdout'],
  ['gcc -c a.s -o a.o', 'unsupported-language'],
  ['gcc -c a.S -o a.o', 'unsupported-language'],
  ['gcc -c a.h -o a.h.gch', 'unsupported-language'],
  ['g++ -c a.hpp', 'unsupported-language'],
  ['gcc -c a.o -o b.o', 'unsupported-language'],
  ['gcc -x assembler -c a.s', 'unsupported-language'],
  ['gcc -x c-header -c a.h', 'unsupported-language'],
  ['gcc -c -S a.c', 'unsupported-option'],
  ['gcc -c a.c -o a.o -o b.o', 'unsupported-option'],
  ['gcc -c a.c -o', 'unsupported-option'],
  // Options that keep a job here.
  ['gcc -fplugin=foo.so -c a.c', 'unsupported-option'],
  ['gcc -specs=my.specs -c a.c', 'unsupported-option'],
  ['gcc -B/opt/bin -c a.c', 'unsupported-option'],
  ['gcc -wrapper gdb,--args -c a.c', 'unsupported-option'],
  ['gcc -save-temps -c a.c', 'unsupported-option'],
  ['gcc -save-temps=obj -c a.c', 'unsupported-option'],
  ['gcc --coverage -c a.c', 'unsupported-option'],
  ['gcc -fprofile-arcs -ftest-coverage -c a.c', 'unsupported-option'],
  ['gcc -fprofile-generate -c a.c', 'unsupported-option'],
  ['gcc -fprofile-use -c a.c', 'unsupported-option'],
  ['gcc -fdump-tree-all -c a.c', 'unsupported-option'],
  ['gcc -frecord-gcc-switches -c a.c', 'records-command-line'],
  ['gcc -Wa,-adhln=a.lst -c a.c', 'unsupported-option'],
  ['gcc -Wp,-MD,a.d -c a.c', 'remote'],
  ['gcc -Wp,-MMD,obj/.a.o.d -c a.c -o obj/a.o', 'remote'],
  ['gcc -Xpreprocessor -DX -c a.c', 'remote'],
  ['gcc -Xassembler --noexecstack -c a.c', 'unsupported-option'],
  ['gcc -g3 -c a.c', 'debug-macros'],
  ['gcc -ggdb3 -c a.c', 'debug-macros'],
  ['gcc -g -gsplit-dwarf -c a.c', 'remote'],
  ['gcc -g -gsplit-dwarf -c src/a.c -o obj/a.o', 'remote'],
  ['gcc -g -gsplit-dwarf -c a.c -o /abs/obj/a.o', 'split-dwarf'],
  ['gcc -g -gsplit-dwarf -c a.c -o ../obj/a.o', 'split-dwarf'],
  ['gcc -fdirectives-only -E a.c', 'unsupported-option'],
  ['gcc -march=native -c a.c', 'native-arch'],
  ['gcc -mtune=native -c a.c', 'native-arch'],
  ['gcc -mcpu=native -c a.c', 'native-arch'],
  ['gcc -fsyntax-only a.c', 'syntax-only'],
  // Probes of build configuration.
  ['gcc -c conftest.c', 'configure-probe'],
  ['gcc -c conftest.c -o conftest.o', 'configure-probe'],
  ['g++ -c conftest.cpp', 'configure-probe'],
  ['cc -c CMakeFiles/CMakeScratch/TryCompile-abc/testCCompiler.c -o x.o', 'configure-probe'],
  ['gcc -c /usr/share/cmake-3.25/Modules/CMakeCCompilerABI.c -o x.o', 'configure-probe'],
  ['gcc -c CMakeCCompilerId.c', 'configure-probe'],
  // clang: distributed with -frewrite-includes, except with debug information.
  ['clang -c a.c -o a.o', 'remote'],
  ['clang++ -O2 -std=c++17 -c a.cc -o a.o', 'remote'],
  ['clang-14 -DX=1 -Iinc -c a.c', 'remote'],
  ['x86_64-linux-gnu-clang++-14 -c a.cpp', 'remote'],
  ['clang -g -c a.c', 'clang-debug-info'],
  ['clang -g -g0 -c a.c', 'remote'],
  ['clang -gline-tables-only -c a.c', 'clang-debug-info'],
  ['clang -imacros m.h -c a.c', 'unsupported-option'],
  ['clang++ -fmodules -c a.cc', 'unsupported-option'],
  ['clang -fprofile-instr-generate -c a.c', 'unsupported-option'],
  // Compilers Ferry does not distribute.
  ['icc -c a.c', 'unsupported-compiler'],
  ['nvcc -c a.cu', 'unsupported-compiler'],
  ['ccache gcc -c a.c', 'ccache-in-front'],
  ['/usr/bin/ccache g++ -c a.cc -o a.o', 'ccache-in-front'],
  ['ld a.o -o b', 'unsupported-compiler'],
];

/** Splits a command line like a shell would for these simple cases (double quotes group). */
function words(line: string): string[] {
  return (line.match(/"[^"]*"|\S+/g) ?? []).map((w) => w.replace(/^"|"$/g, ''));
}

describe('classify', () => {
  it.each(CASES)('%s -> %s', (line, expected) => {
    const decision = classify(words(line));
    expect(decision.decision === 'remote' ? 'remote' : decision.reason).toBe(expected);
  });

  it('has a reason detail for every local decision', () => {
    for (const [line] of CASES) {
      const decision = classify(words(line));
      if (decision.decision === 'local') expect(decision.detail.length, line).toBeGreaterThan(0);
    }
  });

  it('sends preprocessor options to the preprocessor only, code generation options to both', () => {
    const decision = classify(words('gcc -Iinc -DX=1 -include c.h -O2 -g -Wall -std=c11 -MMD -MP -c src/a.c -o obj/a.o'));
    expect(decision.decision).toBe('remote');
    if (decision.decision !== 'remote') return;
    const { plan } = decision;
    expect(plan.source).toBe('src/a.c');
    expect(plan.output).toBe('obj/a.o');
    expect(plan.language).toBe('C');
    expect(plan.cppArgs).toEqual(['-Iinc', '-DX=1', '-include', 'c.h', '-O2', '-g', '-Wall', '-std=c11', '-MMD', '-MP', '-MF', 'obj/a.d', '-MQ', 'obj/a.o']);
    expect(plan.compileArgs).toEqual(['-O2', '-g', '-Wall', '-std=c11', '-c']);
  });

  it('keeps the working directory in the preprocessed output even with -fno-working-directory', () => {
    const decision = classify(words('gcc -g -fno-working-directory -c a.c'));
    if (decision.decision !== 'remote') throw new Error('expected remote');
    expect(decision.plan.cppArgs).toEqual(['-g']);
    expect(decision.plan.compileArgs).toEqual(['-g', '-fno-working-directory', '-c']);
  });

  it('keeps an explicit -MF and -MT as given', () => {
    const decision = classify(words('gcc -MD -MF deps/a.dep -MT target -c a.c -o a.o'));
    if (decision.decision !== 'remote') throw new Error('expected remote');
    expect(decision.plan.cppArgs).toEqual(['-MD', '-MF', 'deps/a.dep', '-MT', 'target']);
  });

  it('names the .dwo of -gsplit-dwarf as gcc does', () => {
    for (const [output, dwo] of [
      ['obj/a.o', 'obj/a.dwo'],
      ['obj/a.c.o', 'obj/a.c.dwo'],
      ['obj/noext', 'obj/noext.dwo'],
      ['a.o', 'a.dwo'],
    ]) {
      const decision = classify(words(`gcc -g -gsplit-dwarf -c a.c -o ${output}`));
      if (decision.decision !== 'remote') throw new Error('expected remote');
      expect(decision.plan.splitDwarf).toBe(dwo);
    }
    const implied = classify(words('gcc -g -gsplit-dwarf -c src/b.c'));
    if (implied.decision !== 'remote') throw new Error('expected remote');
    expect(implied.plan.splitDwarf).toBe('b.dwo');
  });

  it('names implied outputs as gcc does', () => {
    expect(impliedOutput('src/dir/a.c', 'OBJECT')).toBe('a.o');
    expect(impliedOutput('a.cc', 'ASSEMBLY')).toBe('a.s');
    expect(impliedDepFile('obj/a.o')).toBe('obj/a.d');
    expect(impliedDepFile('a.obj')).toBe('a.d');
    const decision = classify(words('gcc -MD -c src/b.c'));
    if (decision.decision !== 'remote') throw new Error('expected remote');
    expect(decision.plan.output).toBe('b.o');
    expect(decision.plan.cppArgs).toEqual(['-MD', '-MF', 'b.d', '-MQ', 'b.o']);
  });

  it('marks already preprocessed input so it is sent as is', () => {
    const decision = classify(words('g++ -O2 -c a.ii -o a.o'));
    if (decision.decision !== 'remote') throw new Error('expected remote');
    expect(decision.plan.preprocessed).toBe(true);
    expect(decision.plan.language).toBe('CXX');
  });

  it('sends clang macro options to both sides (clang -frewrite-includes keeps macros unexpanded)', () => {
    const decision = classify(words('clang -Iinc -DX=1 -U Y -include c.h -x c++ -O2 -c a.c -o a.o'));
    if (decision.decision !== 'remote') throw new Error('expected remote');
    expect(decision.plan.family).toBe('clang');
    expect(decision.plan.cppArgs).toEqual(['-Iinc', '-DX=1', '-U', 'Y', '-include', 'c.h', '-x', 'c++', '-O2']);
    expect(decision.plan.compileArgs).toEqual(['-DX=1', '-UY', '-xc++', '-O2', '-c']);
  });

  it('keeps -x for the preprocessor and reads the language from it', () => {
    const decision = classify(words('gcc -x c++ -c a.c -o a.o'));
    if (decision.decision !== 'remote') throw new Error('expected remote');
    expect(decision.plan.language).toBe('CXX');
    expect(decision.plan.cppArgs).toEqual(['-x', 'c++']);
    expect(decision.plan.compileArgs).toEqual(['-c']);
  });

  it('has at least 100 table cases', () => {
    expect(CASES.length).toBeGreaterThanOrEqual(100);
  });
});
