import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { expandResponseFiles, splitResponseFile } from '../../coordinator/response-file';

describe('response files', () => {
  it.each([
    ['-c a.c -o a.o', ['-c', 'a.c', '-o', 'a.o']],
    ['  -DX=1\n\t-Iinc  \n', ['-DX=1', '-Iinc']],
    ['"-DMSG=hello world" \'-Ia b\'', ['-DMSG=hello world', '-Ia b']],
    ['-DQ=\\"q\\" a\\ b.c', ['-DQ="q"', 'a b.c']],
    ['"" x', ['', 'x']],
    ['', []],
  ])('splits %j', (text, expected) => {
    expect(splitResponseFile(text)).toEqual(expected);
  });

  it('expands nested files relative to the working directory and keeps unreadable ones', () => {
    const files: Record<string, string> = { '/w/a.rsp': '-c @b.rsp x.c', '/w/b.rsp': '-O2 -DY' };
    const read = (p: string) => files[p];
    expect(expandResponseFiles(['gcc', '@a.rsp', '-o', 'x.o', '@missing.rsp'], '/w', read)).toEqual(['gcc', '-c', '-O2', '-DY', 'x.c', '-o', 'x.o', '@missing.rsp']);
  });

  it('stops expanding a file that includes itself', () => {
    const read = () => '-g @self.rsp';
    const out = expandResponseFiles(['gcc', '@self.rsp'], '/w', read);
    expect(out.filter((a) => a === '-g')).toHaveLength(16);
    expect(out[out.length - 1]).toBe('@self.rsp');
  });

  const dir = mkdtempSync(join(tmpdir(), 'ferry-rsp-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads a response file as gcc does (checked against gcc -###)', () => {
    writeFileSync(join(dir, 'args.rsp'), '-DA="x y" \'-DB=1 2\' -DC=\\"z\\" -c\n');
    const expanded = expandResponseFiles(['@args.rsp'], dir);
    expect(expanded).toEqual(['-DA=x y', '-DB=1 2', '-DC="z"', '-c']);
    // gcc -### shows what the driver passes to cc1: each -D value double-quoted, quotes escaped.
    const trace = execFileSync('sh', ['-c', 'gcc -### @args.rsp a.c 2>&1'], { cwd: dir, encoding: 'utf8' });
    const cc1 = trace.split('\n').find((l) => l.includes('/cc1 '))!;
    for (const define of expanded.filter((a) => a.startsWith('-D'))) {
      expect(cc1).toContain(`-D "${define.slice(2).replace(/"/g, '\\"')}"`);
    }
  });
});
