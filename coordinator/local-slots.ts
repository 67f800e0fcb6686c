/** Compiles this machine takes on itself when every remote slot is busy (distcc's `localhost/N`). */
export class LocalSlots {
  private inUse = 0;

  constructor(private size = 0) {}

  resize(size: number): void {
    this.size = size;
  }

  get running(): number {
    return this.inUse;
  }

  get total(): number {
    return this.size;
  }

  /** A release function when a slot is free now, else undefined (the job goes remote, queued). */
  tryAcquire(): (() => void) | undefined {
    if (this.inUse >= this.size) return undefined;
    this.inUse++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.inUse--;
    };
  }
}
