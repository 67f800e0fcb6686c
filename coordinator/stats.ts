/**
 * What Ferry did, counted: jobs by where they ran, every local decision by its reason (as ccache
 * counts every refusal), bytes on the wire and time spent. Kept across coordinator restarts in the
 * state directory.
 */
import { mkdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { ByteCounts__Output } from '../proto/generated/ferry/coordinator/v1/ByteCounts';
import type { HostCounters__Output } from '../proto/generated/ferry/coordinator/v1/HostCounters';
import type { JobCounts__Output } from '../proto/generated/ferry/coordinator/v1/JobCounts';
import type { Stats__Output } from '../proto/generated/ferry/coordinator/v1/Stats';
import type { TimeCounts__Output } from '../proto/generated/ferry/coordinator/v1/TimeCounts';

export type HostCounters = HostCounters__Output;

/** The generated message type, with its sub-messages always present. */
export type Stats = Stats__Output & {
  jobs: JobCounts__Output;
  bytes: ByteCounts__Output;
  time: TimeCounts__Output;
};

export function emptyStats(now = new Date()): Stats {
  return {
    since: now.toISOString(),
    jobs: { remote: 0, local: 0, compileErrors: 0, preprocessErrors: 0, retried: 0, preprocessedDirect: 0, exactReruns: 0, preprocessedForked: 0 },
    local: {},
    hosts: {},
    bytes: { sourceRaw: 0, sourceSent: 0, outputRaw: 0, outputReceived: 0 },
    time: { preprocess: 0, remote: 0, remoteCompile: 0 },
  };
}

/** Lines `<unix seconds> <reason> <sid>` that the launcher appended, counted by reason. */
export function countLauncherFallbacks(text: string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const reason = line.trim().split(/\s+/)[1];
    if (reason) counts[reason] = (counts[reason] ?? 0) + 1;
  }
  return counts;
}

export class StatsStore {
  stats: Stats;
  private dirty = false;
  private timer?: NodeJS.Timeout;

  constructor(private readonly file: string, private readonly launcherFallbacks: string) {
    this.stats = StatsStore.read(file);
  }

  static read(file: string): Stats {
    try {
      const saved = JSON.parse(readFileSync(file, 'utf8')) as Stats;
      // Statistics saved by an older version lack newer counters.
      const empty = emptyStats();
      return { ...empty, ...saved, jobs: { ...empty.jobs, ...saved.jobs } };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return emptyStats();
      // A damaged file must not stop builds; start counting afresh and say so in the log.
      process.stderr.write(`ferry: statistics in ${file} unreadable (${(err as Error).message}); starting from zero\n`);
      return emptyStats();
    }
  }

  host(name: string): HostCounters {
    const counters = (this.stats.hosts[name] ??= { jobs: 0, failures: 0, compileErrors: 0, retried: 0 });
    // Statistics saved by an older version lack newer counters.
    counters.retried ??= 0;
    return counters;
  }

  countLocal(reason: string, n = 1): void {
    this.stats.jobs.local += n;
    this.stats.local[reason] = (this.stats.local[reason] ?? 0) + n;
    this.changed();
  }

  changed(): void {
    this.dirty = true;
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      this.flush();
    }, 2000).unref();
  }

  /** Moves the launcher's fallback lines into the counters (rename first, so none is counted twice). */
  ingestLauncherFallbacks(): void {
    const taken = `${this.launcherFallbacks}.${process.pid}`;
    try {
      renameSync(this.launcherFallbacks, taken);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    const counts = countLauncherFallbacks(readFileSync(taken, 'utf8'));
    unlinkSync(taken);
    for (const [reason, n] of Object.entries(counts)) this.countLocal(reason, n);
  }

  zero(): void {
    this.stats = emptyStats();
    this.dirty = true;
    this.flush();
  }

  flush(): void {
    if (!this.dirty) return;
    mkdirSync(dirname(this.file), { recursive: true });
    const temp = join(dirname(this.file), `.stats.${process.pid}.tmp`);
    writeFileSync(temp, JSON.stringify(this.stats, null, 2));
    renameSync(temp, this.file);
    this.dirty = false;
  }
}
