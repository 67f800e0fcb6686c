import { describe, expect, it } from 'vitest';
import { classify, cppModeOf } from '../../coordinator/classify';
import { needsExactRun, preprocessArgs, remoteCompileArgs, usesColumnBuiltins } from '../../coordinator/preprocess';

describe('cppModeOf', () => {
  it.each([
    ['gcc', ['-O2', '-c'], 'full'],
    ['gcc', ['-O2', '-Wall', '-Werror', '-c'], 'full'],
    ['gcc', ['-g0', '-c'], 'full'],
    ['gcc', ['-g', '-g0', '-c'], 'full'],
    ['gcc', ['-gz', '-c'], 'full'],
    ['gcc', ['-g', '-c'], 'directives-only'],
    ['gcc', ['-ggdb3', '-c'], 'directives-only'],
    ['gcc', ['-gsplit-dwarf', '-g', '-c'], 'directives-only'],
    ['gcc', ['--coverage', '-c'], 'directives-only'],
    ['gcc', ['-ftest-coverage', '-c'], 'directives-only'],
    ['gcc', ['-fprofile-arcs', '-c'], 'directives-only'],
    ['gcc', ['-fprofile-use=x.gcda', '-c'], 'directives-only'],
    ['gcc', ['-fsanitize=address', '-c'], 'directives-only'],
    ['gcc', ['-fno-sanitize=all', '-c'], 'full'],
    ['gcc', ['-flto=auto', '-c'], 'directives-only'],
    ['gcc', ['-fdump-tree-all', '-c'], 'directives-only'],
    ['gcc', ['-fstack-usage', '-c'], 'directives-only'],
    ['gcc', ['-fverbose-asm', '-S'], 'directives-only'],
    ['gcc', ['-fanalyzer', '-c'], 'directives-only'],
    ['clang', ['-O2', '-c'], 'directives-only'],
  ] as const)('%s %j -> %s', (family, args, mode) => expect(cppModeOf(family, 'C', args)).toBe(mode));

  it.each([
    ['C', 'full'],
    ['OBJC', 'full'],
    ['CXX', 'directives-only'],
    ['OBJCXX', 'directives-only'],
  ] as const)('gcc %s -> %s', (language, mode) => expect(cppModeOf('gcc', language, ['-O2', '-c'])).toBe(mode));

  it('leaves an already preprocessed source as it is', () => {
    const c = classify(['gcc', '-O2', '-c', 'a.i']);
    expect(c.decision === 'remote' && c.plan.cppMode).toBe('directives-only');
    expect(c.decision === 'remote' && remoteCompileArgs(c.plan, '/w')).toEqual(['-O2', '-c']);
  });

  it('preprocesses and compiles each mode consistently', () => {
    const c = classify(['gcc', '-O2', '-Iinc', '-c', 'a.c', '-o', 'a.o']);
    if (c.decision !== 'remote') throw new Error('expected remote');
    expect(c.plan.cppMode).toBe('full');
    expect(preprocessArgs(c.plan)).toEqual(['-O2', '-Iinc', '-E', 'a.c']);
    expect(remoteCompileArgs(c.plan, '/w')).toEqual(['-O2', '-c']);
    const exact = { ...c.plan, cppMode: 'directives-only' as const };
    expect(preprocessArgs(exact)).toEqual(['-O2', '-Iinc', '-E', '-fdirectives-only', 'a.c']);
    expect(remoteCompileArgs(exact, '/w')).toEqual(['-O2', '-c', '-fdirectives-only']);
  });
});

describe('needsExactRun', () => {
  const clean = { preprocessExit: 0, preprocessStderr: 0, columnBuiltins: false, compile: { exitCode: 0, stdout: 0, stderr: 0 } };
  it.each([
    ['a clean run', clean, false],
    ['a warning from the compiler', { ...clean, compile: { exitCode: 0, stdout: 0, stderr: 80 } }, true],
    ['compiler output on stdout', { ...clean, compile: { exitCode: 0, stdout: 5, stderr: 0 } }, true],
    ['a failed compile (perhaps -Werror on a full-mode-only warning)', { ...clean, compile: { exitCode: 1, stdout: 0, stderr: 0 } }, true],
    ['a preprocessor warning', { ...clean, preprocessStderr: 30 }, true],
    ['a preprocessor error, no compile', { preprocessExit: 1, preprocessStderr: 30, columnBuiltins: false }, true],
    ['column builtins, no compile', { preprocessExit: 0, preprocessStderr: 0, columnBuiltins: true }, true],
    ['no compiler reached (no host): nothing to redo here', { preprocessExit: 0, preprocessStderr: 0, columnBuiltins: false }, false],
  ])('%s', (_name, run, expected) => expect(needsExactRun(run)).toBe(expected));
});

describe('usesColumnBuiltins', () => {
  it.each([
    ['int c = __builtin_COLUMN();', true],
    ['auto l = __builtin_source_location();', true],
    ['int line = __LINE__ + __builtin_LINE();', false],
    ['', false],
  ])('%s', (text, expected) => expect(usesColumnBuiltins(Buffer.from(text))).toBe(expected));
});
