import { EventEmitter } from 'node:events';

/** At most `size` jobs compile at once; the rest wait in arrival order. Emits 'change' on every move. */
export class Slots extends EventEmitter {
  private running = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(private capacity: number) {
    super();
    Slots.check(capacity);
  }

  private static check(size: number): void {
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`slots must be a positive integer, got ${size}`);
  }

  get size(): number {
    return this.capacity;
  }

  /** Grows or shrinks; waiting holders get the new room at once, running ones are not disturbed. */
  resize(size: number): void {
    Slots.check(size);
    this.capacity = size;
    while (this.running < this.capacity && this.waiting.length > 0) this.waiting.shift()!();
  }

  get inUse(): number {
    return this.running;
  }

  get queued(): number {
    return this.waiting.length;
  }

  /** Resolves with a release function once a slot is free; `signal` abandons the wait. */
  acquire(signal?: AbortSignal): Promise<() => void> {
    return new Promise((resolve, reject) => {
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        this.running--;
        // After a shrink, a release may leave no room for the next in line.
        const next = this.running < this.capacity ? this.waiting.shift() : undefined;
        if (next) next();
        else this.emit('change');
      };
      const grant = () => {
        signal?.removeEventListener('abort', onAbort);
        this.running++;
        this.emit('change');
        resolve(release);
      };
      const onAbort = () => {
        const index = this.waiting.indexOf(grant);
        if (index >= 0) this.waiting.splice(index, 1);
        this.emit('change');
        reject(signal?.reason ?? new Error('aborted'));
      };
      if (signal?.aborted) return reject(signal.reason);
      if (this.running < this.capacity) return grant();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(grant);
      this.emit('change');
    });
  }
}
