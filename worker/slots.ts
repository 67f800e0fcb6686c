import { EventEmitter } from 'node:events';

/** At most `size` jobs compile at once; the rest wait in arrival order. Emits 'change' on every move. */
export class Slots extends EventEmitter {
  private running = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(readonly size: number) {
    super();
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`slots must be a positive integer, got ${size}`);
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
        const next = this.waiting.shift();
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
      if (this.running < this.size) return grant();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(grant);
      this.emit('change');
    });
  }
}
