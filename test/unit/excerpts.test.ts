import { describe, expect, it } from 'vitest';
import {
  diagnosticFiles,
  escapeLineMarkerPath,
  hasLocatedDiagnostics,
  lineMarkerPaths,
  mirrorPath,
  rewriteLineMarkers,
} from '../../worker/excerpts';

const STDERR = [
  'In file included from src/main.c:3:',
  '                 from src/other.c:1,',
  "include/util.h: In function 'f':",
  "include/util.h:7:5: warning: unused variable 'x' [-Wunused-variable]",
  '    7 |     int x;',
  '      |         ^',
  "/abs/path with space/a.c:12:1: error: expected ';' before '}' token",
  "<command-line>: warning: \"X\" redefined",
  "cc1: note: some note",
  '',
].join('\n');

describe('diagnostics that need source excerpts', () => {
  it('finds the files diagnostics point into, in order', () => {
    expect(diagnosticFiles(STDERR)).toEqual(['src/main.c', 'src/other.c', 'include/util.h', '/abs/path with space/a.c']);
  });

  it('reads through colour escapes', () => {
    const coloured = "\x1b[01m\x1b[Kx.c:3:9:\x1b[m\x1b[K \x1b[01;35m\x1b[Kwarning: \x1b[m\x1b[Kunused";
    expect(diagnosticFiles(coloured)).toEqual(['x.c']);
    expect(hasLocatedDiagnostics(coloured)).toBe(true);
  });

  it('knows when no diagnostic has a location', () => {
    expect(hasLocatedDiagnostics('')).toBe(false);
    expect(hasLocatedDiagnostics('cc1: warning: command-line option ignored\n')).toBe(false);
    expect(hasLocatedDiagnostics('<command-line>:1:1: warning: x\n')).toBe(false);
    expect(hasLocatedDiagnostics(STDERR)).toBe(true);
  });
});

describe('line markers', () => {
  const source = [
    '# 0 "a.c"',
    '# 0 "/home/u/proj//"',
    '# 1 "/usr/include/stdio.h" 1 3 4',
    'const char *s = "/usr/include/stdio.h";',
    '# 2 "a \\"quoted\\" \\\\ name.h" 2',
    'int x;',
  ].join('\n');

  it('lists the file names they mention, unescaped', () => {
    expect([...lineMarkerPaths(source)]).toEqual(['a.c', '/home/u/proj//', '/usr/include/stdio.h', 'a "quoted" \\ name.h']);
  });

  it('renames files in line markers only, never in code', () => {
    const out = rewriteLineMarkers(
      source,
      new Map([
        ['/usr/include/stdio.h', '/m/usr/include/stdio.h'],
        ['a "quoted" \\ name.h', '/m/q.h'],
      ]),
    );
    expect(out).toContain('# 1 "/m/usr/include/stdio.h" 1 3 4');
    expect(out).toContain('const char *s = "/usr/include/stdio.h";');
    expect(out).toContain('# 2 "/m/q.h" 2');
    expect(out).toContain('# 0 "a.c"');
  });

  it('escapes as gcc does', () => {
    expect(escapeLineMarkerPath('a"b\\c')).toBe('a\\"b\\\\c');
  });
});

describe('the mirror', () => {
  it.each([
    ['src/a.c', '/job/m/home/u/proj/src/a.c'],
    ['../lib/b.h', '/job/m/home/u/lib/b.h'],
    ['/usr/include/x.h', '/job/m/usr/include/x.h'],
    ['../../../../etc/passwd', undefined],
    ['/../../etc/passwd', undefined],
  ])('%s -> %s', (path, expected) => {
    expect(mirrorPath('/job/m', '/home/u/proj', path)).toBe(expected);
  });
});
