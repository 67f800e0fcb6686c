/**
 * Writing compile outputs where the compiler would have: a temporary file beside the target, then
 * rename, so a reader (make, the linker, a crashed build's next run) sees the old file or the
 * whole new one, never a truncated one.
 */
import { closeSync, fchmodSync, lstatSync, openSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { readdir, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { FerryError } from '../proto/errors';
import { alive } from '../proto/shm-dir';

/** Temporary files look like `.<name>.ferry-<pid>-<random>`. */
const TEMP_NAME = /^\..+\.ferry-(\d+)-[0-9a-f]{8}$/;
const swept = new Set<string>();
/** Makes temporary names unique within this process (the pid makes them unique between processes). */
let tempsMade = 0;

/**
 * Removes temporary files that a coordinator killed mid-write left in `dir`; once per directory
 * per coordinator, so a build pays one readdir per output directory.
 */
export async function sweepTemporaries(dir: string): Promise<void> {
  if (swept.has(dir)) return;
  swept.add(dir);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return; // The write that follows reports what is wrong with the directory.
  }
  for (const name of names) {
    const m = TEMP_NAME.exec(name);
    if (m && Number(m[1]) !== process.pid && !alive(Number(m[1]))) await unlink(join(dir, name)).catch(() => undefined);
  }
}

export async function writeAtomically(path: string, data: Buffer, umask: number): Promise<void> {
  await sweepTemporaries(dirname(path));
  const serial = (++tempsMade >>> 0).toString(16).padStart(8, '0');
  const temp = join(dirname(path), `.${basename(path)}.ferry-${process.pid}-${serial}`);
  const mode = 0o666 & ~umask;
  // Synchronous on purpose: five small system calls into the page cache cost less than five trips
  // through the thread pool and their promises, on the coordinator's busiest path.
  let fd: number | undefined;
  try {
    fd = openSync(temp, 'wx', mode);
    writeFileSync(fd, data);
    // open() applies the coordinator's umask; the file gets the compiling user's.
    fchmodSync(fd, mode);
    closeSync(fd);
    fd = undefined;
    // A rename that replaces a file makes ext4 (auto_da_alloc) force the new file's blocks out:
    // 0.1-0.7 ms per job in a rebuild, where every object exists already. Without the old file the
    // rename is plain; the object is missing for that moment, never truncated or stale.
    removeIfPresent(path);
    renameSync(temp, path);
  } catch (err) {
    if (fd !== undefined) closeSync(fd);
    await unlink(temp).catch(() => undefined);
    const code = (err as NodeJS.ErrnoException).code;
    throw new FerryError(
      'output-write-failed',
      `cannot write ${path}: ${(err as Error).message}`,
      code === 'ENOSPC' ? 'The disk is full; free space and build again.' : 'Check that the output directory exists and is writable.',
      { cause: err },
    );
  }
}

/**
 * A failed compile leaves no output behind. gcc itself leaves an older object in place; removing it
 * means nothing stale from before the failure can be linked later.
 */
export async function removeOutput(path: string): Promise<void> {
  removeIfPresent(path);
}

/**
 * Removes a file; one that is not there is already what was wanted. It looks first: a failing
 * unlink costs Node an exception, and in a clean build no output is there yet.
 */
export function removeIfPresent(path: string): void {
  if (!lstatSync(path, { throwIfNoEntry: false })) return;
  try {
    unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
