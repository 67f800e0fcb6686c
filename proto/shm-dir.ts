/**
 * Private directories on a tmpfs (/dev/shm) for files that live for one job. On ext4 each such file
 * costs an inode allocated and freed through the journal, and allocating one scans the block
 * group's bitmap past the inodes freed a moment ago (`recently_deleted`): in npm run bench (b) the
 * worker's job files cost ~2 ms of CPU per job that way, the coordinator's preprocessed sources
 * less but alike. Both daemons use one: the coordinator for preprocessed sources, the worker for
 * its job directories.
 */
import { lstatSync, mkdirSync, readFileSync, readdirSync, rmSync, statfsSync } from 'node:fs';
import { join } from 'node:path';

const TMPFS_MAGIC = 0x01021994;

/** A process that can still write: running, not a zombie waiting for a parent to reap it. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false; // Gone between the two looks.
  }
}

export function isTmpfs(path: string): boolean {
  try {
    return statfsSync(path).type === TMPFS_MAGIC;
  } catch {
    return false;
  }
}

/**
 * Makes `<shm>/ferry-<uid>-<kind>-<pid>` (0700) and returns it, after removing this user's
 * directories of the same kind whose process is dead (a daemon that was killed leaves its own).
 * Undefined, with `why` told, when `shm` is no tmpfs or the directory cannot be made.
 */
export function makeShmDir(kind: string, shm: string, why: (reason: string) => void): string | undefined {
  if (!isTmpfs(shm)) return undefined;
  const uid = process.getuid?.() ?? 0;
  try {
    const own = new RegExp(`^ferry-${uid}-${kind}-(\\d+)$`);
    for (const name of readdirSync(shm)) {
      const m = own.exec(name);
      if (!m || Number(m[1]) === process.pid || alive(Number(m[1]))) continue;
      // /dev/shm is everyone's: only a directory of this user is ours to remove.
      const info = lstatSync(join(shm, name), { throwIfNoEntry: false });
      if (info?.isDirectory() && info.uid === uid) rmSync(join(shm, name), { recursive: true, force: true });
    }
    const dir = join(shm, `ferry-${uid}-${kind}-${process.pid}`);
    // Not recursive: a directory someone else made under this name first is refused, not used.
    mkdirSync(dir, { mode: 0o700 });
    return dir;
  } catch (err) {
    why(`cannot use ${shm}: ${(err as Error).message}`);
    return undefined;
  }
}
