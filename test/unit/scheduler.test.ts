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
