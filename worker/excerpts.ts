/**
 * Source excerpts in diagnostics. gcc prints the source line under each diagnostic by reading the
 * file named in the line markers; on the worker those files do not exist, so the excerpts would be
 * missing. The worker asks the client for the files its diagnostics name, puts them in a mirror of
 * their paths inside the job directory, and compiles again for the diagnostics alone.
 */
import { isAbsolute, join, resolve, sep } from 'node:path';

const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;
/** `path:line:col: ` at the start of a diagnostic. */
const LOCATED = /^(.+?):(\d+):(\d+): /;
/** `In file included from path:line:` and its continuation lines `                 from path:line,`. */
const INCLUDED = /^(?:In file included from|\s+from) (.+?):(\d+)(?::\d+)?[:,]$/;
/** Not files: locations gcc invents. */
const PSEUDO = /^<.*>$/;

export function stripAnsi(text: string): string {
  return text.replace(ANSI, '');
}

/** True when some diagnostic points at a line of a file (so a local compile would show an excerpt). */
export function hasLocatedDiagnostics(stderr: string): boolean {
  return stripAnsi(stderr)
    .split('\n')
    .some((line) => {
      const m = LOCATED.exec(line);
      return !!m && !PSEUDO.test(m[1]);
    });
}

/** The files diagnostics point into, in order of first mention. */
export function diagnosticFiles(stderr: string): string[] {
  const files = new Set<string>();
  for (const line of stripAnsi(stderr).split('\n')) {
    const m = LOCATED.exec(line) ?? INCLUDED.exec(line);
    if (m && !PSEUDO.test(m[1])) files.add(m[1]);
  }
  return [...files];
}

/** How gcc writes a file name inside a line marker's quotes. */
export function escapeLineMarkerPath(path: string): string {
  return path.replace(/\\/g, '\\\\').replace(/"/g, '\\"');
}

/** Every file name the line markers (`# 12 "path" 1 3`) of a preprocessed source mention. */
export function lineMarkerPaths(source: string): Set<string> {
  const paths = new Set<string>();
  const marker = /^# \d+ "((?:[^"\\]|\\.)*)"/gm;
  for (let m = marker.exec(source); m; m = marker.exec(source)) {
    paths.add(m[1].replace(/\\(.)/g, '$1'));
  }
  return paths;
}

/** Replaces file names in line markers only (never in the code), by their escaped forms. */
export function rewriteLineMarkers(source: string, renames: ReadonlyMap<string, string>): string {
  if (renames.size === 0) return source;
  const escaped = new Map([...renames].map(([from, to]) => [escapeLineMarkerPath(from), escapeLineMarkerPath(to)]));
  return source.replace(/^(# \d+ ")((?:[^"\\]|\\.)*)(")/gm, (whole, head: string, path: string, tail: string) => {
    const to = escaped.get(path);
    return to === undefined ? whole : head + to + tail;
  });
}

/**
 * Where a file named `path` goes in the mirror rooted at `root`, for a compiler running in the
 * mirror of `cwd`. Undefined when the name would leave the mirror (`../../..` past the root).
 */
export function mirrorPath(root: string, cwd: string, path: string): string | undefined {
  const target = isAbsolute(path) ? join(root, path) : resolve(join(root, cwd), path);
  return target.startsWith(root + sep) ? target : undefined;
}
