import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { decodeChunk, encodeChunk, splitIntoChunks } from '../../proto/chunks';
import { Notices, QUIET_WINDOW_MS } from '../../coordinator/notices';
import { countLauncherFallbacks } from '../../coordinator/stats';
import { exitStatus } from '../../proto/exit-status';

describe('source chunks', () => {
  it('compresses text with LZ4 and restores it exactly', () => {
    const text = Buffer.from('int main(void) { return 0; }\n'.repeat(5000));
    const chunk = encodeChunk(text);
    expect(chunk.compression).toBe('LZ4_BLOCK');
    expect((chunk.data as Buffer).length).toBeLessThan(text.length / 10);
    expect(decodeChunk({ compression: 'LZ4_BLOCK', data: chunk.data as Buffer }).equals(text)).toBe(true);
  });

  it('sends incompressible data raw', () => {
    const random = randomBytes(4096);
    const chunk = encodeChunk(random);
    expect(chunk.compression).toBe('NONE');
    expect(decodeChunk({ compression: 'NONE', data: chunk.data as Buffer })).toEqual(random);
  });

  it('splits into 1 MiB pieces that join back', () => {
    const big = Buffer.alloc(2.5 * (1 << 20), 'x');
    const parts = [...splitIntoChunks(big)].map((c) => decodeChunk({ compression: c.compression as 'NONE' | 'LZ4_BLOCK', data: c.data as Buffer }));
    expect(parts.map((p) => p.length)).toEqual([1 << 20, 1 << 20, 0.5 * (1 << 20)]);
    expect(Buffer.concat(parts).equals(big)).toBe(true);
  });

  it('rejects damaged and oversized chunks with a clear error', () => {
    const packed = encodeChunk(Buffer.alloc(100000, 'a')).data as Buffer;
    expect(() => decodeChunk({ compression: 'LZ4_BLOCK', data: packed.subarray(0, 2) })).toThrow(/shorter than its size prefix/);
    expect(() => decodeChunk({ compression: 'LZ4_BLOCK', data: packed }, 1000)).toThrow(/over the limit of 1000/);
    const wrongSize = Buffer.from(packed);
    wrongSize.writeUInt32LE(99999, 0);
    expect(() => decodeChunk({ compression: 'LZ4_BLOCK', data: wrongSize })).toThrow(/LZ4 chunk/);
    expect(() => decodeChunk({ compression: 'LZ4_BLOCK', data: Buffer.from([5, 0, 0, 0, 0xff, 0xff]) })).toThrow(/LZ4 chunk/);
  });
});

describe('notices once per build', () => {
  it('tells the first job of a build, not the rest; a new session or a pause tells again', () => {
    const notices = new Notices();
    expect(notices.shouldTell('no-host-available', 100, 0)).toBe(true);
    expect(notices.shouldTell('no-host-available', 100, 1000)).toBe(false);
    expect(notices.shouldTell('no-host-available', 100, 1000 + QUIET_WINDOW_MS - 1)).toBe(false);
    expect(notices.shouldTell('no-host-available', 101, 1000 + QUIET_WINDOW_MS)).toBe(true);
    expect(notices.shouldTell('remote-failed', 101, 1000 + QUIET_WINDOW_MS)).toBe(true);
    expect(notices.shouldTell('no-host-available', 101, 1000 + 3 * QUIET_WINDOW_MS)).toBe(true);
  });
});

describe('small decisions', () => {
  it('counts the launcher fallback lines by reason', () => {
    expect(countLauncherFallbacks('1700000000 coordinator-unreachable 42\n1700000001 coordinator-unreachable 42\n1700000002 coordinator-lost 7\n\n')).toEqual({
      'coordinator-unreachable': 2,
      'coordinator-lost': 1,
    });
  });

  it('gives shell exit statuses', () => {
    expect(exitStatus(0, null)).toBe(0);
    expect(exitStatus(3, null)).toBe(3);
    expect(exitStatus(null, 'SIGKILL')).toBe(137);
    expect(exitStatus(null, 'SIGTERM')).toBe(143);
  });
});

describe('worker slots', () => {
  it('runs at most `size` holders at once and hands slots on in arrival order', async () => {
    const { Slots } = await import('../../worker/slots');
    const slots = new Slots(2);
    const a = await slots.acquire();
    const b = await slots.acquire();
    expect(slots.inUse).toBe(2);
    const order: string[] = [];
    const c = slots.acquire().then((release) => (order.push('c'), release));
    const d = slots.acquire().then((release) => (order.push('d'), release));
    expect(slots.queued).toBe(2);
    a();
    a(); // releasing twice must not free a second slot
    expect(slots.inUse).toBe(2);
    (await c)();
    b();
    (await d)();
    expect(order).toEqual(['c', 'd']);
    expect(slots.inUse).toBe(0);
    expect(() => new Slots(0)).toThrow(RangeError);
  });
});

describe('diagnostic colours', () => {
  it('asks for colours only where the user would see them', async () => {
    const { wantsColour } = await import('../../coordinator/diagnostics');
    const argv = ['gcc', '-c', 'a.c'];
    expect(wantsColour({ stderrIsTty: true, argv }, { TERM: 'xterm' })).toBe(true);
    expect(wantsColour({ stderrIsTty: false, argv }, { TERM: 'xterm' })).toBe(false);
    expect(wantsColour({ stderrIsTty: true, argv }, { TERM: 'dumb' })).toBe(false);
    expect(wantsColour({ stderrIsTty: true, argv }, { GCC_COLORS: '' })).toBe(false);
    expect(wantsColour({ stderrIsTty: true, argv: [...argv, '-fdiagnostics-color=never'] }, {})).toBe(false);
    expect(wantsColour({ stderrIsTty: true, argv: [...argv, '-fno-diagnostics-color'] }, {})).toBe(false);
  });
});

describe('resizing slots', () => {
  it('grows to let waiters in at once and shrinks without disturbing the running', async () => {
    const { Slots } = await import('../../worker/slots');
    const slots = new Slots(1);
    const a = await slots.acquire();
    let bGot = false;
    const b = slots.acquire().then((r) => ((bGot = true), r));
    slots.resize(2);
    const releaseB = await b;
    expect(bGot).toBe(true);
    slots.resize(1);
    let cGot = false;
    const c = slots.acquire().then((r) => ((cGot = true), r));
    a();
    await new Promise((r) => setImmediate(r));
    expect(cGot).toBe(false); // one still runs (b) and the size is 1
    releaseB();
    (await c)();
    expect(slots.inUse).toBe(0);
  });
});
