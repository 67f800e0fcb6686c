import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { makePreprocessDir, removePreprocessDir } from '../../coordinator/preprocess-dir';

const uid = process.getuid!();
const scratch = mkdtempSync(join(tmpdir(), 'ferry-cppdir-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe('the preprocessed sources directory', () => {
  it('is a private directory on /dev/shm, named for this user and coordinator, removed at the end', () => {
    const fallback = join(scratch, 'runtime', 'cpp');
    const dir = makePreprocessDir(fallback);
    try {
      expect(dir).toBe(`/dev/shm/ferry-${uid}-cpp-${process.pid}`);
      expect(statSync(dir).mode & 0o777).toBe(0o700);
      expect(existsSync(fallback)).toBe(false);
    } finally {
      removePreprocessDir(dir, fallback);
    }
    expect(existsSync(dir)).toBe(false);
  });

  it("sweeps a dead coordinator's directory, keeps a live one's", () => {
    // pid 2^22 + 1 is above Linux's pid_max limit: no process has it.
    const dead = `/dev/shm/ferry-${uid}-cpp-4194305`;
    const live = `/dev/shm/ferry-${uid}-cpp-1`;
    mkdirSync(dead, { recursive: true });
    writeFileSync(join(dead, 'left.i'), 'int x;\n');
    mkdirSync(live, { recursive: true });
    const fallback = join(scratch, 'runtime2', 'cpp');
    const dir = makePreprocessDir(fallback);
    try {
      expect(existsSync(dead)).toBe(false);
      expect(existsSync(live)).toBe(true);
    } finally {
      removePreprocessDir(dir, fallback);
      rmSync(live, { recursive: true, force: true });
    }
  });

  it('falls back to the runtime directory where there is no tmpfs, and keeps it', () => {
    const fallback = join(scratch, 'runtime3', 'cpp');
    const dir = makePreprocessDir(fallback, scratch);
    expect(dir).toBe(fallback);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    removePreprocessDir(dir, fallback);
    expect(existsSync(fallback)).toBe(true);
  });

  it('does not take over a directory that already has its name', () => {
    const taken = `/dev/shm/ferry-${uid}-cpp-${process.pid}`;
    mkdirSync(taken, { recursive: true });
    const fallback = join(scratch, 'runtime4', 'cpp');
    const lines: string[] = [];
    try {
      expect(makePreprocessDir(fallback, '/dev/shm', (l) => lines.push(l))).toBe(fallback);
      expect(lines.join('\n')).toMatch(/cannot use \/dev\/shm: EEXIST/);
    } finally {
      rmSync(taken, { recursive: true, force: true });
    }
  });
});
