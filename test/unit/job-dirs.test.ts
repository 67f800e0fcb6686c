import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { emptyJobDir, JobDirs } from '../../worker/job-dirs';

let root: string;
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'ferry-jobdirs-'));
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

/** What a finished job leaves: its source, captured output, outputs in subdirectories, a mirror. */
function fill(dir: string): void {
  writeFileSync(join(dir, 'source.i'), 'int x;');
  writeFileSync(join(dir, 'compiler.stderr'), 'warning');
  mkdirSync(join(dir, 'out', 'obj', 'sub'), { recursive: true });
  writeFileSync(join(dir, 'out', 'obj', 'sub', 'a.o'), 'ELF');
  writeFileSync(join(dir, 'out', 'a.dwo'), 'DWO');
  mkdirSync(join(dir, 'mirror', 'home', 'u'), { recursive: true });
  writeFileSync(join(dir, 'mirror', 'home', 'u', 'a.h'), '#pragma once');
  symlinkSync('/etc/passwd', join(dir, 'link'));
}

describe('JobDirs', () => {
  it('hands back an emptied directory, with an empty out/, to the next job', () => {
    const dirs = new JobDirs(root, 2, () => undefined);
    const first = dirs.take();
    expect(readdirSync(first)).toEqual(['out']);
    fill(first);
    dirs.give(first, true);
    expect(dirs.idleCount).toBe(1);
    const again = dirs.take();
    expect(again).toBe(first);
    expect(readdirSync(again)).toEqual(['out']);
    expect(readdirSync(join(again, 'out'))).toEqual([]);
    // The symlink went, not what it pointed at.
    expect(existsSync('/etc/passwd')).toBe(true);
  });

  it('removes the directory of a job that did not end normally', () => {
    const dirs = new JobDirs(root, 2, () => undefined);
    const dir = dirs.take();
    fill(dir);
    dirs.give(dir, false);
    expect(existsSync(dir)).toBe(false);
    expect(dirs.idleCount).toBe(0);
  });

  it('keeps no more idle directories than slots', () => {
    const dirs = new JobDirs(root, 2, () => undefined);
    const taken = [dirs.take(), dirs.take(), dirs.take()];
    expect(new Set(taken).size).toBe(3);
    for (const d of taken) dirs.give(d, true);
    expect(dirs.idleCount).toBe(2);
    expect(readdirSync(root)).toHaveLength(2);
  });

  it('says so when a directory cannot be emptied, and does not keep it', () => {
    const lines: string[] = [];
    const dirs = new JobDirs(root, 2, (line) => lines.push(line));
    const dir = dirs.take();
    // Gone under it (an administrator cleaning the tmpdir): nothing to empty, nothing to keep.
    rmSync(dir, { recursive: true });
    dirs.give(dir, true);
    expect(dirs.idleCount).toBe(0);
    expect(lines.join('\n')).toMatch(/could not empty .* removing it/);
    expect(dirs.take()).not.toBe(dir);
  });
});

describe('emptyJobDir', () => {
  it('recreates out/ when a job removed it', () => {
    const dir = mkdtempSync(join(root, 'job-'));
    writeFileSync(join(dir, 'source.i'), 'x');
    emptyJobDir(dir);
    expect(readdirSync(dir)).toEqual(['out']);
  });
});
