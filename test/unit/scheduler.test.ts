import { describe, expect, it } from 'vitest';
import { chooseHost, Scheduler, type Schedulable } from '../../coordinator/scheduler';

const h = (slots: number, busy: number, usable = true) => ({ usable, slots, busy });

describe('chooseHost', () => {
  it.each([
    ['no hosts', [], -1],
    ['one free host', [h(4, 0)], 0],
    ['full host', [h(4, 4)], -1],
    ['host down', [h(4, 0, false)], -1],
    ['largest free share wins', [h(4, 3), h(4, 1)], 1],
    ['share, not count: 1/2 free beats 3/8 free', [h(8, 5), h(2, 1)], 1],
    ['jobs of other initiators count: busy 4 of 4 is full', [h(4, 4), h(8, 7)], 1],
    ['equal share: fewer running wins', [h(8, 4), h(2, 1)], 1],
    ['full tie: first listed wins', [h(4, 2), h(4, 2)], 0],
    ['equal load: the host that had fewer jobs takes its turn', [{ ...h(4, 0), jobsDone: 5 }, { ...h(4, 0), jobsDone: 4 }], 1],
    ['fewer jobs so far does not beat more free slots', [{ ...h(4, 1), jobsDone: 0 }, { ...h(4, 0), jobsDone: 9 }], 1],
    ['skips unusable even if emptier', [h(4, 0, false), h(4, 3)], 1],
    ['all full', [h(1, 1), h(2, 2)], -1],
  ])('%s', (_name, hosts, expected) => {
    expect(chooseHost(hosts)).toBe(expected);
  });
});

describe('Scheduler', () => {
  /** A host whose busy count is its own jobs, as with no other initiator on the worker. */
  const host = (name: string, slots: number): Schedulable => {
    const h = { name, slots, inUse: 0, usable: true, get busy() { return h.inUse; } };
    return h;
  };

  it('queues when every slot is busy and grants in arrival order', async () => {
    const a = host('a', 1);
    const scheduler = new Scheduler<Schedulable>(10);
    const first = await scheduler.acquire(() => [a]);
    expect(first).toBe(a);
    const order: string[] = [];
    const second = scheduler.acquire(() => [a]).then((x) => order.push(`second:${x.name}`));
    const third = scheduler.acquire(() => [a]).then((x) => order.push(`third:${x.name}`));
    expect(scheduler.queued).toBe(2);
    scheduler.release(a);
    await second;
    scheduler.release(a);
    await third;
    expect(order).toEqual(['second:a', 'third:a']);
    expect(a.inUse).toBe(1);
  });

  it('refuses when the queue is full, and when no host is usable', async () => {
    const a = host('a', 1);
    const scheduler = new Scheduler<Schedulable>(1);
    await scheduler.acquire(() => [a]);
    const waiting = scheduler.acquire(() => [a]);
    await expect(scheduler.acquire(() => [a])).rejects.toThrow(/already wait/);
    a.usable = false;
    scheduler.pump();
    await expect(waiting).rejects.toThrow(/went down/);
    await expect(scheduler.acquire(() => [a])).rejects.toThrow(/no host is up/);
  });

  it('gives up a wait when its job is cancelled', async () => {
    const a = host('a', 1);
    const scheduler = new Scheduler<Schedulable>(4);
    await scheduler.acquire(() => [a]);
    const aborter = new AbortController();
    const waiting = scheduler.acquire(() => [a], aborter.signal);
    aborter.abort();
    await expect(waiting).rejects.toThrow(/cancelled/);
    expect(scheduler.queued).toBe(0);
  });
});

describe('compiler identity', () => {
  it('matches on version and target, and on the binary only when asked', async () => {
    const { compilerMatches } = await import('../../coordinator/host');
    const local = { name: 'gcc', path: '/usr/bin/gcc', version: 'gcc (Debian 12.2.0-14) 12.2.0', target: 'x86_64-linux-gnu', sha256: 'aa', fileVersion: '1:1' };
    const remote = { name: 'gcc', path: '/usr/bin/gcc', version: local.version, target: local.target, sha256: 'bb', fileVersion: '1:1' };
    expect(compilerMatches(local, remote)).toBe(true);
    expect(compilerMatches(local, remote, true)).toBe(false);
    expect(compilerMatches(local, { ...remote, sha256: 'aa' }, true)).toBe(true);
    expect(compilerMatches(local, { ...remote, version: 'gcc (Debian 12.2.0-14) 12.3.0' })).toBe(false);
    expect(compilerMatches(local, { ...remote, target: 'aarch64-linux-gnu' })).toBe(false);
    expect(compilerMatches(local, undefined)).toBe(false);
  });
});

describe('remote capacity for localhost slots', () => {
  it('counts usable slots less other initiators jobs', async () => {
    const { remoteCapacity } = await import('../../coordinator/job');
    expect(remoteCapacity([])).toBe(0);
    expect(remoteCapacity([{ usable: true, slots: 4, busy: 1, inUse: 1 }])).toBe(4);
    expect(remoteCapacity([{ usable: true, slots: 4, busy: 3, inUse: 1 }])).toBe(2);
    expect(remoteCapacity([{ usable: false, slots: 8, busy: 0, inUse: 0 }, { usable: true, slots: 2, busy: 5, inUse: 0 }])).toBe(0);
  });
});
