/**
 * What a worker's jobs left in its temp area. Job directories are kept, emptied, for the next job
 * (worker/job-dirs.ts): nothing of a job may remain in them, and no more may wait than slots.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

/** Every file under `tmp`, relative to it; not directories, nor the sockets of the worker's fork servers. */
export function leftoverFiles(tmp: string): string[] {
  if (!existsSync(tmp)) return [];
  return readdirSync(tmp, { recursive: true, withFileTypes: true })
    .filter((e) => !e.isDirectory() && !(e.isSocket() && /^fork-\d+-.*\.sock$/.test(e.name)))
    .map((e) => join(e.parentPath ?? (e as unknown as { path: string }).path, e.name).slice(tmp.length + 1));
}

/**
 * The job directories waiting for a job under `tmp`: <tmp>/ferry-worker-XXXX/job-XXXX. (The other
 * entry there, the directory gcc's driver is asked about with placeholder names, holds no job.)
 */
export function idleJobDirs(tmp: string): string[] {
  if (!existsSync(tmp)) return [];
  return readdirSync(tmp).flatMap((root) =>
    readdirSync(join(tmp, root))
      .filter((d) => d.startsWith('job-'))
      .map((d) => join(root, d)),
  );
}
