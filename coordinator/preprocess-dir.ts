/**
 * Where launchers write preprocessed sources for the coordinator: a private directory on a tmpfs
 * (/dev/shm) when there is one, else the runtime directory. A preprocessed source lives for a few
 * milliseconds; on ext4 its file costs an inode allocated and freed through the journal every job.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { makeShmDir } from '../proto/shm-dir';

/** `/dev/shm/ferry-<uid>-cpp-<pid>` (proto/shm-dir.ts), or `fallback` (made 0700) when no tmpfs can be used. */
export function makePreprocessDir(fallback: string, shm = '/dev/shm', log: (line: string) => void = () => undefined): string {
  const dir = makeShmDir('cpp', shm, (reason) => log(`preprocessed sources go to ${fallback}: ${reason}`));
  if (dir) return dir;
  mkdirSync(fallback, { recursive: true, mode: 0o700 });
  return fallback;
}

/** Removes the directory if it is a /dev/shm one of ours (the runtime directory's stays). */
export function removePreprocessDir(dir: string, fallback: string): void {
  if (dir !== fallback) rmSync(dir, { recursive: true, force: true });
}
