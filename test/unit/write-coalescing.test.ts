import { createServer, connect, type Server, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { coalesceWrites } from '../../coordinator/write-coalescing';

let dir: string | undefined;
let server: Server | undefined;
let client: Socket | undefined;

afterEach(() => {
  client?.destroy();
  server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A connected pair over a Unix socket; resolves the client and a log of what the server read, read by read. */
async function pair(): Promise<{ client: Socket; reads: Buffer[]; received: (bytes: number) => Promise<void> }> {
  dir = mkdtempSync(join(tmpdir(), 'ferry-coalesce-'));
  const path = join(dir, 's');
  const reads: Buffer[] = [];
  let total = 0;
  let waiter: { bytes: number; resolve: () => void } | undefined;
  server = createServer((s) =>
    s.on('data', (d: Buffer) => {
      reads.push(d);
      total += d.length;
      if (waiter && total >= waiter.bytes) waiter.resolve();
    }),
  );
  await new Promise<void>((r) => server!.listen(path, r));
  client = connect(path);
  await new Promise<void>((r) => client!.once('connect', r));
  const received = (bytes: number) =>
    new Promise<void>((resolve) => {
      if (total >= bytes) return resolve();
      waiter = { bytes, resolve };
    });
  return { client, reads, received };
}

describe('coalesceWrites', () => {
  it('sends the writes of one tick as one, in order', async () => {
    const { client, reads, received } = await pair();
    coalesceWrites(client);
    // An SSH packet as ssh2 writes it: length, ciphertext, tag.
    client.write(Buffer.from('LEN:'));
    client.write(Buffer.from('ciphertext;'));
    client.write(Buffer.from('TAG'));
    await received(18);
    expect(Buffer.concat(reads).toString()).toBe('LEN:ciphertext;TAG');
    expect(reads).toHaveLength(1);
  });

  it('flushes every tick: a write in a later tick is not held back', async () => {
    const { client, reads, received } = await pair();
    coalesceWrites(client);
    client.write('first');
    await received(5);
    await new Promise((r) => setTimeout(r, 10));
    client.write('second');
    await received(11);
    expect(Buffer.concat(reads).toString()).toBe('firstsecond');
    expect(reads).toHaveLength(2);
  });

  it('hands the socket one writev of all the pieces, where a plain socket makes one write each', async () => {
    const { client, received } = await pair();
    // Node's stream calls _writev for corked chunks (one syscall) and _write for each otherwise.
    const calls: string[] = [];
    const spy = (socket: Socket) => {
      const s = socket as unknown as { _write: (...a: unknown[]) => void; _writev: (chunks: unknown[], cb: unknown) => void };
      const write = s._write.bind(socket);
      const writev = s._writev.bind(socket);
      s._write = (...a: unknown[]) => (calls.push('write'), write(...a));
      s._writev = (chunks: unknown[], cb: unknown) => (calls.push(`writev:${chunks.length}`), writev(chunks, cb));
    };
    spy(client);
    client.write('a');
    client.write('b');
    client.write('c');
    await received(3);
    const plain = calls.splice(0);
    coalesceWrites(client);
    client.write('d');
    client.write('e');
    client.write('f');
    await received(6);
    expect(plain.filter((c) => c === 'write').length).toBeGreaterThanOrEqual(1);
    expect(plain).not.toContain('writev:3');
    expect(calls).toEqual(['writev:3']);
  });
});
