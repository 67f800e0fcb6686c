/** Comparing a build through Ferry with a local build of the same tree. */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { expect } from 'vitest';

/** Every regular file below `dir` whose name passes `filter`, relative, sorted. */
export function filesBelow(dir: string, filter: (name: string) => boolean): string[] {
  const found: string[] = [];
  const walk = (d: string) => {
    for (const entry of readdirSync(d, { withFileTypes: true })) {
      const path = join(d, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (filter(entry.name)) found.push(relative(dir, path));
    }
  };
  walk(dir);
  return found.sort();
}

export const objectsAndDeps = (name: string) => name.endsWith('.o') || name.endsWith('.d');

/**
 * Asserts that every file `filter` picks in `localDir` exists in `ferryDir` with the same bytes;
 * dependency files name their own build directory, which is the one difference allowed there.
 * Returns the files compared.
 */
export function expectSameBuild(localDir: string, ferryDir: string, filter: (name: string) => boolean = objectsAndDeps): string[] {
  const files = filesBelow(localDir, filter);
  expect(filesBelow(ferryDir, filter)).toEqual(files);
  for (const file of files) {
    const a = readFileSync(join(localDir, file));
    const b = readFileSync(join(ferryDir, file));
    if (file.endsWith('.d')) expect(b.toString().replaceAll(ferryDir, '@'), file).toBe(a.toString().replaceAll(localDir, '@'));
    else expect(b.equals(a), `${file} differs`).toBe(true);
  }
  return files;
}
