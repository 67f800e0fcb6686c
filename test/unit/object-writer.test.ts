import { linkSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { removeOutput, sweepTemporaries, writeAtomically } from '../../coordinator/object-writer';

const dir = mkdtempSync(join(tmpdir(), 'ferry-writer-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('writing outputs', () => {
  it('replaces the file whole, with the mode the user umask gives, leaving no temporary', async () => {
    const path = join(dir, 'a.o');
    writeFileSync(path, 'old object');
    await writeAtomically(path, Buffer.from('new object'), 0o027);
    expect(readFileSync(path, 'utf8')).toBe('new object');
    expect(statSync(path).mode & 0o777).toBe(0o640);
    expect(readdirSync(dir).filter((n) => n.includes('.ferry-'))).toEqual([]);
  });

  it('never writes into the old file: a reader holding it (a hard link here) keeps the old bytes', async () => {
    const path = join(dir, 'b.o');
    writeFileSync(path, 'old object');
    linkSync(path, join(dir, 'b.o.held'));
    await writeAtomically(path, Buffer.from('new object, longer'), 0o022);
    expect(readFileSync(path, 'utf8')).toBe('new object, longer');
    expect(readFileSync(join(dir, 'b.o.held'), 'utf8')).toBe('old object');
    expect(statSync(path).ino).not.toBe(statSync(join(dir, 'b.o.held')).ino);
  });

  it('says what to do when the directory is missing', async () => {
    await expect(writeAtomically(join(dir, 'missing', 'a.o'), Buffer.from('x'), 0o022)).rejects.toThrow(/cannot write .*missing\/a\.o/);
  });

  it('removes outputs of failed compiles, and tolerates their absence', async () => {
    writeFileSync(join(dir, 'stale.o'), 'stale');
    await removeOutput(join(dir, 'stale.o'));
    await removeOutput(join(dir, 'stale.o'));
    expect(readdirSync(dir)).not.toContain('stale.o');
  });

  it('sweeps temporaries of dead coordinators, keeps live ones and everything else', async () => {
    const sub = mkdtempSync(join(dir, 'sweep-'));
    writeFileSync(join(sub, '.x.o.ferry-999999-0badf00d'), 'left by a killed coordinator');
    writeFileSync(join(sub, `.y.o.ferry-${process.ppid}-0badf00d`), 'being written by a live one');
    writeFileSync(join(sub, 'z.o'), 'an object');
    writeFileSync(join(sub, '.z.o.ferry-notes'), 'not ours');
    await sweepTemporaries(sub);
    expect(readdirSync(sub).sort()).toEqual([`.y.o.ferry-${process.ppid}-0badf00d`, '.z.o.ferry-notes', 'z.o']);
  });
});

describe('sweeping after a killed coordinator not yet reaped', () => {
  it('treats a zombie writer as dead', async () => {
    const { spawn } = await import('node:child_process');
    // A background `sleep 1` outlives its shell, which by then has become `sleep 10` and never waits
    // for it: a zombie whose pid still answers kill(pid, 0), like a killed daemon that init has not
    // reaped yet. (Exiting before the exec, the shell itself might reap it.)
    const parent = spawn('sh', ['-c', 'sleep 1 & echo $!; exec sleep 10'], { stdio: ['ignore', 'pipe', 'ignore'] });
    const pid = Number(await new Promise<string>((resolve) => parent.stdout!.once('data', (d: Buffer) => resolve(d.toString()))));
    try {
      // Wait for the zombie, boundedly.
      const state = () => readFileSync(`/proc/${pid}/stat`, 'utf8');
      for (let i = 0; i < 100 && !/\) Z /.test(state()); i++) await new Promise((r) => setTimeout(r, 50));
      expect(state()).toMatch(/\) Z /);
      const sub = mkdtempSync(join(dir, 'zombie-'));
      writeFileSync(join(sub, `.z.o.ferry-${pid}-0badf00d`), 'left by a killed coordinator');
      await sweepTemporaries(sub);
      expect(readdirSync(sub)).toEqual([]);
    } finally {
      parent.kill('SIGKILL');
    }
  });
});
