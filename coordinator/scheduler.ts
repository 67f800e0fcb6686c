/**
 * Placing jobs on hosts' slots. The choice is a pure function over a snapshot of the hosts; the
 * Scheduler class only queues jobs (bounded, first come first served) while every slot is busy.
 */
import { FerryError } from '../proto/errors';

export interface SlotView {
  /** Connected and its compiler matches this job's. */
  usable: boolean;
  slots: number;
  /** Slots taken: this coordinator's jobs, or more when the worker reports jobs of other initiators. */
  busy: number;
  /** Jobs this coordinator has sent there: among equals, the host that had fewer gets the next. */
  jobsDone?: number;
}

/**
 * The usable host with a free slot and the largest share of its slots free; ties go to the host
 * with fewer jobs running, then to the one that had fewer jobs so far (so equal hosts take turns),
 * then to the one listed first. -1 when no slot is free.
 */
export function chooseHost(hosts: readonly SlotView[]): number {
  let best = -1;
  for (let i = 0; i < hosts.length; i++) {
    const h = hosts[i];
    if (!h.usable || h.busy >= h.slots) continue;
    if (best < 0) {
      best = i;
      continue;
    }
    const b = hosts[best];
    const free = (h.slots - h.busy) / h.slots;
    const bestFree = (b.slots - b.busy) / b.slots;
    const fewerDone = (h.jobsDone ?? 0) < (b.jobsDone ?? 0);
    if (free > bestFree || (free === bestFree && (h.busy < b.busy || (h.busy === b.busy && fewerDone)))) best = i;
  }
  return best;
}

export interface Schedulable extends SlotView {
  name: string;
  /** This coordinator's jobs on the host; the scheduler counts them. */
  inUse: number;
}

interface Waiter<H extends Schedulable> {
  candidates: () => H[];
  resolve: (host: H) => void;
  reject: (err: Error) => void;
}

export class Scheduler<H extends Schedulable> {
  private readonly waiting: Waiter<H>[] = [];

  constructor(private readonly maxQueued: number) {}

  get queued(): number {
    return this.waiting.length;
  }

  /**
   * A slot on one of `candidates()` (re-read each time a slot frees). Rejects when no candidate is
   * usable at all, or the queue is full.
   */
  acquire(candidates: () => H[], signal?: AbortSignal): Promise<H> {
    return new Promise((resolve, reject) => {
      const waiter: Waiter<H> = { candidates, resolve, reject };
      if (this.tryGrant(waiter)) return;
      if (!candidates().some((h) => h.usable)) {
        reject(new FerryError('no-host-available', 'no host is up with a matching compiler'));
        return;
      }
      if (this.waiting.length >= this.maxQueued) {
        reject(new FerryError('queue-full', `${this.maxQueued} jobs already wait for a remote slot`));
        return;
      }
      this.waiting.push(waiter);
      signal?.addEventListener(
        'abort',
        () => {
          const index = this.waiting.indexOf(waiter);
          if (index >= 0) this.waiting.splice(index, 1);
          reject(new FerryError('cancelled', 'job cancelled while waiting for a slot'));
        },
        { once: true },
      );
    });
  }

  release(host: H): void {
    host.inUse--;
    this.pump();
  }

  /** Call when slots free up or hosts change state: grants what it can, fails what can never run. */
  pump(): void {
    for (let i = 0; i < this.waiting.length; ) {
      const waiter = this.waiting[i];
      if (this.tryGrant(waiter)) {
        this.waiting.splice(i, 1);
      } else if (!waiter.candidates().some((h) => h.usable)) {
        this.waiting.splice(i, 1);
        waiter.reject(new FerryError('no-host-available', 'every host for this job went down'));
      } else {
        i++;
      }
    }
  }

  private tryGrant(waiter: Waiter<H>): boolean {
    const hosts = waiter.candidates();
    const index = chooseHost(hosts);
    if (index < 0) return false;
    hosts[index].inUse++;
    waiter.resolve(hosts[index]);
    return true;
  }
}
