/**
 * Where launchers write preprocessed sources for the coordinator: a private directory on a tmpfs
 * (/dev/shm) when there is one, else the runtime directory. A preprocessed source lives for a few
 * milliseconds; on ext4 its file costs an inode allocated and freed through the journal every job.
 */
import { lstatSync, mkdirSync, readdirSync, rmSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { alive } from './object-writer';

const TMPFS_MAGIC = 0x01021994;

/** `/dev/shm/ferry-<uid>-cpp-<pid>`: whose and which coordinator's, so a dead one's can be swept. */
const OWN = (uid: number) => new RegExp(`^ferry-${uid}-cpp-(\\d+)$`);

function isTmpfs(path: string): boolean {
  try {
    return statfsSync(path).type === TMPFS_MAGIC;
  } catch {
    return false;
  }
}

/** Makes the directory (0700); `fallback` when no tmpfs can be used. Directories of dead coordinators of this user are removed. */
export function makePreprocessDir(fallback: string, shm = '/dev/shm', log: (line: string) => void = () => undefined): string {
  const uid = process.getuid?.() ?? 0;
  if (isTmpfs(shm)) {
    try {
      const own = OWN(uid);
      for (const name of readdirSync(shm)) {
        const m = own.exec(name);
        if (!m || Number(m[1]) === process.pid || alive(Number(m[1]))) continue;
        // /dev/shm is everyone's: only a directory of this user is ours to remove.
        const info = lstatSync(join(shm, name), { throwIfNoEntry: false });
        if (info?.isDirectory() && info.uid === uid) rmSync(join(shm, name), { recursive: true, force: true });
      }
      const dir = join(shm, `ferry-${uid}-cpp-${process.pid}`);
      // Not recursive: a directory someone else made under this name first is refused, not used.
      mkdirSync(dir, { mode: 0o700 });
      return dir;
    } catch (err) {
      log(`preprocessed sources go to ${fallback}: cannot use ${shm}: ${(err as Error).message}`);
    }
  }
  mkdirSync(fallback, { recursive: true, mode: 0o700 });
  return fallback;
}

/** Removes the directory if it is a /dev/shm one of ours (the runtime directory's stays). */
export function removePreprocessDir(dir: string, fallback: string): void {
  if (dir !== fallback) rmSync(dir, { recursive: true, force: true });
}
