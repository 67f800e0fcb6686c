/**
 * The object comparison the debug-info tests rely on, checked with objects compiled here: it
 * accepts what may differ (DW_AT_producer alone) and reports, by section, what may not.
 */
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compareObjects, compileUnits, debugDump } from '../support/objdiff';

const SOURCE = `#include <string.h>
#include <stdio.h>
#define SQ(x) ((x) * (x))
#define MAXV(a, b) ((a) > (b) ? (a) : (b))

static int table[16];

int f(int a, const char *s) {
  int n = (int)strlen(s);
  for (int i = 0; i < 16; i++) table[i] = SQ(i) + a;
  return SQ(a) + MAXV(n, a) +
         SQ(n);
}

void show(int v) { printf("%d\\n", f(v, "abc")); }
`;

let dir: string;

function gcc(args: string[], cwd = dir): void {
  execFileSync('gcc', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Ferry's split in one directory: preprocess with -fdirectives-only, compile the result. */
function splitCompile(flags: string[], source: string, output: string, cwd = dir): void {
  const pre = execFileSync('gcc', [...flags, '-E', '-fdirectives-only', source], { cwd, maxBuffer: 1 << 28 });
  const name = join(cwd, `${output}.i`);
  writeFileSync(name, pre);
  gcc([...flags, '-fdirectives-only', '-c', name, '-o', output], cwd);
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-objdiff-'));
  writeFileSync(join(dir, 'm.c'), SOURCE);
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('compareObjects', () => {
  it('calls two compiles of the same source identical', () => {
    gcc(['-O2', '-g', '-c', 'm.c', '-o', 'a.o']);
    gcc(['-O2', '-g', '-c', 'm.c', '-o', 'b.o']);
    expect(compareObjects(join(dir, 'a.o'), join(dir, 'b.o'))).toEqual({ identical: true, differences: [] });
  });

  it.each(['-O0 -g', '-O2 -g', '-g1', '-g -gz', '-gdwarf-4'])('accepts a difference in DW_AT_producer alone (%s, -fdirectives-only split)', (label) => {
    const flags = label.split(' ');
    gcc([...flags, '-c', 'm.c', '-o', 'local.o']);
    splitCompile(flags, 'm.c', 'split.o');
    expect(readFileSync(join(dir, 'local.o')).equals(readFileSync(join(dir, 'split.o')))).toBe(false);
    const result = compareObjects(join(dir, 'local.o'), join(dir, 'split.o'));
    expect(result.identical).toBe(false);
    expect(result.differences).toEqual([]);
    expect(result.producers?.local[0]).not.toMatch(/-fdirectives-only/);
    expect(result.producers?.remote[0]).toMatch(/-fdirectives-only/);
  });

  it('reports different code in .text (-O0 against -O2)', () => {
    gcc(['-O0', '-c', 'm.c', '-o', 'o0.o']);
    gcc(['-O2', '-c', 'm.c', '-o', 'o2.o']);
    const result = compareObjects(join(dir, 'o0.o'), join(dir, 'o2.o'));
    expect(result.identical).toBe(false);
    expect(result.differences.some((d) => d.startsWith('.text: '))).toBe(true);
    expect(result.differences.every((d) => !d.includes('\n'))).toBe(true);
  });

  it('reports different line numbers in .debug_line (one blank line more)', () => {
    // The same file name in the same directory, one blank line more near the top the second time.
    const lines = join(dir, 'lines');
    mkdirSync(lines);
    writeFileSync(join(lines, 'm.c'), SOURCE);
    gcc(['-O2', '-g', '-c', 'm.c', '-o', 'a.o'], lines);
    writeFileSync(join(lines, 'm.c'), SOURCE.replace('\nstatic int', '\n\nstatic int'));
    gcc(['-O2', '-g', '-c', 'm.c', '-o', 'b.o'], lines);
    const result = compareObjects(join(lines, 'a.o'), join(lines, 'b.o'));
    expect(result.differences.some((d) => /^\.debug_line: line \d+ .*local ".*Line.*" vs remote ".*Line.*"$/.test(d))).toBe(true);
    expect(result.differences.some((d) => d.startsWith('.debug_info: ') && d.includes('DW_AT_decl_line'))).toBe(true);
    // The code is the same: no non-debug section is named.
    expect(result.differences.filter((d) => !d.startsWith('.debug_'))).toEqual([]);
  });

  it('reports different columns (plain gcc -E, as distcc splits) in .debug_line or .debug_info', () => {
    gcc(['-O0', '-g', '-c', 'm.c', '-o', 'col-local.o']);
    const pre = execFileSync('gcc', ['-O0', '-g', '-E', 'm.c'], { cwd: dir });
    writeFileSync(join(dir, 'plain.i'), pre);
    gcc(['-O0', '-g', '-c', 'plain.i', '-o', 'col-plain.o']);
    const result = compareObjects(join(dir, 'col-local.o'), join(dir, 'col-plain.o'));
    expect(result.differences.some((d) => /column/.test(d))).toBe(true);
  });

  it('reports another DW_AT_comp_dir (the same source compiled in another directory)', () => {
    const other = join(dir, 'elsewhere');
    mkdirSync(other);
    cpSync(join(dir, 'm.c'), join(other, 'm.c'));
    gcc(['-g', '-c', 'm.c', '-o', 'here.o']);
    gcc(['-g', '-c', 'm.c', '-o', join(dir, 'there.o')], other);
    const result = compareObjects(join(dir, 'here.o'), join(dir, 'there.o'));
    expect(result.differences.join('\n')).toContain(other);
    expect(compileUnits(join(dir, 'there.o'))[0].compDir).toBe(other);
  });

  it('compares split DWARF (.o and .dwo) through the strings behind DW_FORM_strx, not the indices', () => {
    // The worker's way for a relative -o (facts: the .dwo is named after -o): same -o, another directory.
    const local = join(dir, 'split-local');
    const remote = join(dir, 'split-remote');
    for (const d of [local, remote]) mkdirSync(join(d, 'obj'), { recursive: true });
    cpSync(join(dir, 'm.c'), join(local, 'm.c'));
    gcc(['-g', '-gsplit-dwarf', '-c', 'm.c', '-o', 'obj/m.o'], local);
    writeFileSync(join(remote, 'm.i'), execFileSync('gcc', ['-g', '-E', '-fdirectives-only', 'm.c'], { cwd: local }));
    gcc(['-g', '-gsplit-dwarf', '-fdirectives-only', '-c', 'm.i', '-o', 'obj/m.o'], remote);
    expect(compareObjects(join(local, 'obj/m.o'), join(remote, 'obj/m.o'))).toEqual({ identical: true, differences: [] });
    const dwo = compareObjects(join(local, 'obj/m.dwo'), join(remote, 'obj/m.dwo'));
    expect(dwo.identical).toBe(false);
    expect(dwo.differences).toEqual([]);
    const [unit] = compileUnits(join(local, 'obj/m.dwo'));
    expect(unit).toMatchObject({ name: 'm.c', compDir: local });
    expect(compileUnits(join(local, 'obj/m.o'))[0]).toMatchObject({ dwoName: 'obj/m.dwo', compDir: local });
    // The input's own path changes nothing (names come from the linemarkers)…
    gcc(['-g', '-gsplit-dwarf', '-fdirectives-only', '-c', join(remote, 'm.i'), '-o', 'obj/m.o'], remote);
    const elsewhere = compareObjects(join(local, 'obj/m.dwo'), join(remote, 'obj/m.dwo'));
    expect(elsewhere.differences).toEqual([]);
    // …but without the working-directory linemarker, DW_AT_comp_dir is the compiling directory.
    execFileSync('sh', ['-c', `grep -v '^# 1 ".*//"$' m.i > m2.i && gcc -g -gsplit-dwarf -fdirectives-only -c m2.i -o obj/m.o`], { cwd: remote });
    const noCwd = compareObjects(join(local, 'obj/m.dwo'), join(remote, 'obj/m.dwo'));
    expect(noCwd.differences.some((d) => d.includes(remote))).toBe(true);
  });

  it('reports a section that only one object has', () => {
    gcc(['-O2', '-c', 'm.c', '-o', 'nodebug.o']);
    gcc(['-O2', '-g', '-c', 'm.c', '-o', 'debug.o']);
    const result = compareObjects(join(dir, 'nodebug.o'), join(dir, 'debug.o'));
    expect(result.differences.some((d) => d.startsWith('section list: '))).toBe(true);
  });

  it('fails loudly on a file that is not an ELF object', () => {
    writeFileSync(join(dir, 'not-elf.o'), 'not an object');
    gcc(['-c', 'm.c', '-o', 'plain.o']);
    expect(() => compareObjects(join(dir, 'plain.o'), join(dir, 'not-elf.o'))).toThrow();
  });
});

describe('debugDump and compileUnits', () => {
  it('give the compile unit attributes with string offsets resolved', () => {
    gcc(['-O2', '-g', '-c', 'm.c', '-o', 'cu.o']);
    const [unit] = compileUnits(join(dir, 'cu.o'));
    expect(unit).toMatchObject({ name: 'm.c', compDir: dir });
    expect(unit.producer).toMatch(/^GNU C\d+ .* -g -O2/);
    const dump = debugDump(join(dir, 'cu.o'));
    expect(dump).toMatch(/^== \.debug_info$/m);
    expect(dump).toMatch(/^== \.debug_line$/m);
    expect(dump).not.toMatch(/offset: 0x[0-9a-f]+\): /);
    expect(dump).toContain('DW_AT_producer');
  });
});
