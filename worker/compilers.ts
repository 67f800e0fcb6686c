/**
 * The compilers a worker may run. Clients name a compiler ("gcc", "g++-12"); the worker maps the
 * name to an absolute path it found itself, so a request can never choose what is executed.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile, realpath } from 'node:fs/promises';
import { accessSync, constants, readdirSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';
import type { CompilerInfo } from '../proto/generated/ferry/v1/CompilerInfo';

const execFileAsync = promisify(execFile);

/** gcc, g++, cc, c++, clang, clang++, with an optional target prefix and version suffix. */
const COMPILER_NAME = /^(?:[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*-)?(?:gcc|g\+\+|cc|c\+\+|clang|clang\+\+)(?:-\d+(?:\.\d+)*)?$/;

export function isCompilerName(name: string): boolean {
  return COMPILER_NAME.test(name) && !name.includes('/');
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** First executable named `name` on PATH. */
export function findOnPath(name: string, pathVar = process.env.PATH ?? ''): string | undefined {
  for (const dir of pathVar.split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    if (isExecutable(candidate)) return candidate;
  }
  return undefined;
}

/** Every compiler-like executable on PATH (the default allow list). */
export function discoverCompilerNames(pathVar = process.env.PATH ?? ''): string[] {
  const names = new Set<string>();
  for (const dir of pathVar.split(delimiter)) {
    let entries: string[];
    try {
      entries = readdirSync(dir);
    } catch {
      continue; // A PATH entry that does not exist is common and harmless.
    }
    for (const entry of entries) if (isCompilerName(entry)) names.add(entry);
  }
  return [...names].sort();
}

/** The executable's content hash, through symlinks (cc -> gcc-12). */
export async function fileSha256(path: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(await realpath(path)))
    .digest('hex');
}

async function probe(path: string, args: string[]): Promise<string> {
  const { stdout } = await execFileAsync(path, args, { timeout: 10_000, env: { ...process.env, LC_ALL: 'C' } });
  return stdout.split('\n')[0].trim();
}

export interface CompilerTable {
  byName: Map<string, CompilerInfo & { path: string; version: string; target: string; sha256: string }>;
  /** Names that were asked for but could not be used, with why. */
  problems: string[];
}

/** Resolves names to paths and asks each compiler who it is. */
export async function loadCompilers(names: string[], pathVar = process.env.PATH ?? ''): Promise<CompilerTable> {
  const table: CompilerTable = { byName: new Map(), problems: [] };
  await Promise.all(
    names.map(async (name) => {
      if (!isCompilerName(name)) {
        table.problems.push(`${name}: not a compiler name (gcc, g++, cc, c++, clang, clang++, with optional prefix/version)`);
        return;
      }
      const path = findOnPath(name, pathVar);
      if (!path) {
        table.problems.push(`${name}: not found on PATH`);
        return;
      }
      try {
        const [version, target, sha256] = await Promise.all([probe(path, ['--version']), probe(path, ['-dumpmachine']), fileSha256(path)]);
        table.byName.set(name, { name, path, version, target, sha256 });
      } catch (err) {
        table.problems.push(`${name}: ${path} did not answer --version/-dumpmachine: ${(err as Error).message}`);
      }
    }),
  );
  return table;
}
