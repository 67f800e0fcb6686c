/**
 * Job directories, kept for the next job rather than removed. Making and removing a directory is a
 * journal update each on ext4: in npm run bench (b), with the jobs' compilers writing beside them,
 * removing each job's directory took 2 ms of the worker's ~4 ms per job. A directory goes back
 * emptied of everything its job left (an empty `out/` stays); one whose job ended abnormally, or
 * that cannot be emptied, is removed instead. At most `keep` (the slots) wait idle.
 */
import { mkdirSync, mkdtempSync, readdirSync, rmSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { errorMessage } from '../proto/errors';

export class JobDirs {
  private readonly idle: string[] = [];

  constructor(
    private readonly root: string,
    private readonly keep: number,
    private readonly log: (line: string) => void,
  ) {}

  /** An empty directory for one job (with an empty `out/`). */
  take(): string {
    const reused = this.idle.pop();
    if (reused) return reused;
    const dir = mkdtempSync(join(this.root, 'job-'));
    mkdirSync(join(dir, 'out'));
    return dir;
  }

  /** Hands a job's directory back: emptied for the next job when `reusable`, else removed. */
  give(dir: string, reusable: boolean): void {
    if (reusable && this.idle.length < this.keep) {
      try {
        emptyJobDir(dir);
        this.idle.push(dir);
        return;
      } catch (err) {
        this.log(`could not empty ${dir} for the next job (${errorMessage(err)}); removing it`);
      }
    }
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch (err) {
      this.log(`could not remove ${dir}: ${errorMessage(err)}`);
    }
  }

  get idleCount(): number {
    return this.idle.length;
  }
}

/** Removes everything in a job directory but the directory and its `out/`, which is emptied too. */
export function emptyJobDir(dir: string): void {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.name === 'out' && entry.isDirectory()) {
      for (const inner of readdirSync(path, { withFileTypes: true })) removeEntry(join(path, inner.name), inner.isDirectory());
    } else {
      removeEntry(path, entry.isDirectory());
    }
  }
  // `out/` must exist for the next job, whatever the last one did to it.
  mkdirSync(join(dir, 'out'), { recursive: true });
}

function removeEntry(path: string, isDirectory: boolean): void {
  if (isDirectory) rmSync(path, { recursive: true, force: true });
  else unlinkSync(path);
}
