/**
 * Which compiler a job names on this machine, and who it is (`--version`, `-dumpmachine`): a job
 * goes only to hosts whose compiler of the same name says the same.
 */
import { execFile } from 'node:child_process';
import { statSync } from 'node:fs';
import { basename, delimiter, isAbsolute, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { FerryError } from '../proto/errors';
import { fileSha256 } from '../worker/compilers';

const execFileAsync = promisify(execFile);

export interface LocalCompiler {
  /** The name workers know it by: the basename of what the user named ("gcc", "g++-12"). */
  name: string;
  path: string;
  version: string;
  target: string;
  /** SHA-256 of the executable (through symlinks), compared when FERRY_MATCH_BINARY=1. */
  sha256: string;
  /** The executable's size and modification time: which build of it this is, on this machine. */
  fileVersion: string;
}

/** The launcher binary: a masquerade symlink named gcc must not be mistaken for gcc. */
const LAUNCHER = join(__dirname, '..', 'bin', 'ferry');

function sameFile(a: { dev: number; ino: number }, b: { dev: number; ino: number } | undefined): boolean {
  return !!b && a.dev === b.dev && a.ino === b.ino;
}

/** Missing candidates are expected while searching PATH (and cost no exception this way). */
function statOrUndefined(path: string) {
  try {
    return statSync(path, { throwIfNoEntry: false });
  } catch {
    return undefined; // EACCES, ENOTDIR: a PATH entry a shell would skip too.
  }
}

/** PATH searches of the last moments: a build asks the same one for every job (a dozen stats each). */
const searched = new Map<string, { path: string | undefined; at: number }>();
const SEARCH_TTL_MS = 2000;

/** Finds `named` as a shell would, skipping the Ferry launcher itself. */
export function resolveCompilerPath(named: string, cwd: string, pathVar: string, now = Date.now()): string | undefined {
  if (named.includes('/')) return isAbsolute(named) ? named : resolve(cwd, named);
  const key = `${named}\0${cwd}\0${pathVar}`;
  const hit = searched.get(key);
  if (hit && now - hit.at < SEARCH_TTL_MS) return hit.path;
  const path = searchPath(named, cwd, pathVar);
  if (searched.size > 256) searched.clear();
  searched.set(key, { path, at: now });
  return path;
}

function searchPath(named: string, cwd: string, pathVar: string): string | undefined {
  const launcher = statOrUndefined(LAUNCHER);
  for (const dir of pathVar.split(delimiter)) {
    if (!dir) continue;
    const candidate = resolve(cwd, dir, named);
    const info = statOrUndefined(candidate);
    if (info && info.isFile() && info.mode & 0o111 && !sameFile(info, launcher)) return candidate;
  }
  return undefined;
}

const cache = new Map<string, Promise<LocalCompiler>>();

/** Identifies the compiler; answers are cached per file version (path, size, mtime). */
export function identifyCompiler(named: string, cwd: string, pathVar: string): Promise<LocalCompiler> {
  const path = resolveCompilerPath(named, cwd, pathVar);
  if (!path) {
    return Promise.reject(new FerryError('compiler-not-found', `compiler "${named}" not found on PATH`, 'Check the compiler name and PATH.'));
  }
  const info = statSync(path);
  const fileVersion = `${info.size}:${info.mtimeMs}`;
  const key = `${path}\0${fileVersion}`;
  let entry = cache.get(key);
  if (!entry) {
    entry = (async () => {
      const probe = async (args: string[]) =>
        (await execFileAsync(path, args, { timeout: 10_000, env: { PATH: pathVar, LC_ALL: 'C' } })).stdout.split('\n')[0].trim();
      const [version, target, sha256] = await Promise.all([probe(['--version']), probe(['-dumpmachine']), fileSha256(path)]);
      return { name: basename(named), path, version, target, sha256, fileVersion };
    })();
    entry.catch(() => cache.delete(key));
    cache.set(key, entry);
  }
  return entry;
}
