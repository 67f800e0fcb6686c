import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readCapped } from '../../worker/compile';
import {
  describeEnd,
  encodeRequest,
  errnoName,
  ExecError,
  MAX_REQUEST_BYTES,
  parseReply,
  signalName,
  statusOfExit,
  type SpawnRequest,
} from '../../worker/exec-helper';

const REQUEST: SpawnRequest = {
  path: '/usr/bin/gcc',
  args: ['-c', 'x.i', '-o', 'x.o'],
  cwd: '/tmp/job',
  env: { PATH: '/usr/bin', LANG: 'C', UNSET: undefined },
  stdoutPath: '/tmp/job/compiler.stdout',
  stderrPath: '/tmp/job/compiler.stderr',
};

describe('the exec helper request', () => {
  it('is "<id> <length>\\n" then NUL-terminated fields: spawn, path, cwd, stdout, stderr, argc, argv, envc, env', () => {
    const frame = encodeRequest(7, REQUEST);
    const newline = frame.indexOf('\n');
    const [id, length] = frame.subarray(0, newline).toString().split(' ');
    const body = frame.subarray(newline + 1);
    expect(id).toBe('7');
    expect(Number(length)).toBe(body.length);
    expect(body[body.length - 1]).toBe(0);
    expect(body.subarray(0, -1).toString().split('\0')).toEqual([
      'spawn', '/usr/bin/gcc', '/tmp/job', '/tmp/job/compiler.stdout', '/tmp/job/compiler.stderr',
      '5', '/usr/bin/gcc', '-c', 'x.i', '-o', 'x.o',
      '2', 'PATH=/usr/bin', 'LANG=C',
    ]);
  });

  it('keeps empty arguments and counts bytes, not characters', () => {
    const frame = encodeRequest(1, { ...REQUEST, args: ['', 'ü'], env: {} });
    const newline = frame.indexOf('\n');
    expect(Number(frame.subarray(0, newline).toString().split(' ')[1])).toBe(frame.length - newline - 1);
    expect(frame.subarray(newline + 1, -1).toString().split('\0').slice(5)).toEqual(['3', '/usr/bin/gcc', '', 'ü', '0']);
  });

  it('asks for a named pipe as fifo, path', () => {
    expect(encodeRequest(3, { fifo: '/tmp/job/assembly.s' }).toString()).toBe('3 25\nfifo\0/tmp/job/assembly.s\0');
    expect(() => encodeRequest(3, { fifo: '/tmp/a\0b' })).toThrow(/NUL byte/);
  });

  it.each([
    ['an argument', { args: ['a\0b'] }],
    ['an environment value', { env: { LANG: 'C\0x' } }],
    ['the working directory', { cwd: '/tmp\0x' }],
  ])('refuses a NUL byte in %s', (_what, change) => {
    expect(() => encodeRequest(1, { ...REQUEST, ...change })).toThrow(ExecError);
    expect(() => encodeRequest(1, { ...REQUEST, ...change })).toThrow(/NUL byte/);
  });

  it('refuses a request over the helper limit, as E2BIG', () => {
    const error = (() => {
      try {
        encodeRequest(1, { ...REQUEST, args: ['x'.repeat(MAX_REQUEST_BYTES)] });
      } catch (err) {
        return err;
      }
    })();
    expect(error).toBeInstanceOf(ExecError);
    expect((error as ExecError).errno).toBe('E2BIG');
  });
});

describe('exec helper replies', () => {
  it.each<[string, ReturnType<typeof parseReply>]>([
    ['ready 1', { kind: 'ready', version: 1 }],
    ['started 12 4567', { kind: 'started', id: 12, pid: 4567 }],
    ['exited 12 0', { kind: 'exited', id: 12, code: 0, signalNumber: null }],
    ['exited 12 255', { kind: 'exited', id: 12, code: 255, signalNumber: null }],
    ['exited 3 - 9', { kind: 'exited', id: 3, code: null, signalNumber: 9 }],
    ['made 8', { kind: 'made', id: 8 }],
    ['failed 4 2 No such file or directory', { kind: 'failed', id: 4, errno: 2, message: 'No such file or directory' }],
    ['failed 4 28 cannot create the stderr file: No space left on device', { kind: 'failed', id: 4, errno: 28, message: 'cannot create the stderr file: No space left on device' }],
    ['unforked 5 2 cannot reach the fork server: No such file or directory', { kind: 'unforked', id: 5, errno: 2, message: 'cannot reach the fork server: No such file or directory' }],
    // Not replies: the helper is abandoned.
    ['', undefined],
    ['ready', undefined],
    ['started 1', undefined],
    ['started 1 0', undefined],
    ['started 1 1', undefined],
    ['started -1 20', undefined],
    ['exited 1 0 9', undefined],
    ['exited 1 -', undefined],
    ['exited 1 - ', undefined],
    ['failed 1 x msg', undefined],
    ['unforked 1 x msg', undefined],
    ['unforked 1', undefined],
    ['ferry-worker-exec: something', undefined],
    ['started 1 20 ', undefined],
    ['made', undefined],
    ['made 8 x', undefined],
  ])('%j', (line, expected) => {
    expect(parseReply(line)).toEqual(expected);
  });
});

describe('exit statuses and names', () => {
  it.each<[number | null, number | null, number]>([
    [0, null, 0],
    [1, null, 1],
    [255, null, 255],
    [null, 9, 137],
    [null, 15, 143],
    [null, 11, 139],
    // A real-time signal Node has no name for.
    [null, 40, 168],
  ])('code %s, signal %s: status %s', (code, signal, status) => {
    expect(statusOfExit(code, signal)).toBe(status);
  });

  it('names signals and errnos, and numbers it does not know', () => {
    expect(signalName(9)).toBe('SIGKILL');
    expect(signalName(40)).toBe('SIG40');
    expect(errnoName(2)).toBe('ENOENT');
    expect(errnoName(13)).toBe('EACCES');
    expect(errnoName(9999)).toBe('errno 9999');
  });

  it('describes how a process ended', () => {
    expect(describeEnd(null, 'SIGKILL')).toBe('killed by SIGKILL');
    expect(describeEnd(2, null)).toBe('exited with status 2');
  });
});

describe('reading captured compiler output', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-capped-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, content: string | Buffer) => {
    writeFileSync(join(dir, name), content);
    return join(dir, name);
  };

  it.each<[string, string, number, string]>([
    ['empty', '', 10, ''],
    ['under the limit', 'warning\n', 10, 'warning\n'],
    ['exactly the limit', '0123456789', 10, '0123456789'],
    ['over the limit', '0123456789abc', 10, '0123456789\nferry-worker: output cut at 10 bytes\n'],
  ])('%s', async (name, content, limit, expected) => {
    expect((await readCapped(file(name.replace(/ /g, '-'), content), limit)).toString()).toBe(expected);
  });

  it('reads only the limit of a large file', async () => {
    const path = file('large', Buffer.alloc(8 << 20, 'x'));
    const data = await readCapped(path, 1000);
    expect(data.length).toBe(1000 + '\nferry-worker: output cut at 1000 bytes\n'.length);
  });
});
