/** The coordinator's control service: status, a live status stream, statistics, stop. */
import type * as grpc from '@grpc/grpc-js';
import { FERRY_VERSION } from '../proto/version';
import type { CoordinatorStatus } from '../proto/generated/ferry/coordinator/v1/CoordinatorStatus';
import type { JobRecord } from '../proto/generated/ferry/coordinator/v1/JobRecord';
import type { Stats } from '../proto/generated/ferry/coordinator/v1/Stats';
import type { Host } from './host';
import type { LocalSlots } from './local-slots';
import type { HostPool } from './pool';
import type { Scheduler } from './scheduler';
import type { StatsStore } from './stats';

export interface ControlDeps {
  pool: HostPool;
  scheduler: Scheduler<Host>;
  localSlots: LocalSlots;
  stats: StatsStore;
  recent: readonly JobRecord[];
  startedAt: string;
  /** Launcher requests being handled now. */
  running: () => number;
  jobsDone: () => number;
  stop: () => void;
}

/** How often `ferry monitor` may get a new picture, and how often it gets one anyway. */
const MONITOR_TICK_MS = 250;
const MONITOR_HEARTBEAT_MS = 2000;

export function buildStatus(deps: ControlDeps, recentCount: number, now = Date.now()): CoordinatorStatus {
  return {
    version: FERRY_VERSION,
    pid: process.pid,
    started: deps.startedAt,
    hosts: deps.pool.description,
    hostStatus: deps.pool.hosts.map((h) => ({
      name: h.name,
      state: h.state,
      lastError: h.lastError ?? '',
      slots: h.slots,
      inUse: h.inUse,
      jobsDone: h.jobsDone,
      failures: h.failures,
      workerVersion: h.description?.version ?? '',
      compilers: h.description?.compilers ?? [],
      compilerMismatches: [...h.compilerMismatches.values()],
      running: [...h.running.values()].map((job) => ({ source: job.source, millis: now - job.started })),
      workerRunning: h.load?.running ?? 0,
      workerQueued: h.load?.queued ?? 0,
    })),
    runningJobs: deps.running(),
    queuedJobs: deps.scheduler.queued,
    recent: recentCount > 0 ? deps.recent.slice(-recentCount) : [],
    jobsDone: deps.jobsDone(),
    localSlots: deps.localSlots.total,
    localRunning: deps.localSlots.running,
    notes: deps.pool.config.notes,
  };
}

export function controlService(deps: ControlDeps) {
  const monitors = new Set<grpc.ServerWritableStream<{ recentJobs: number }, CoordinatorStatus>>();
  return {
    /** Ends the live streams, so a shutdown need not wait them out. */
    endStreams(): void {
      for (const call of monitors) call.end();
    },
    handlers: {
      Status: (call: grpc.ServerUnaryCall<{ recentJobs: number }, CoordinatorStatus>, callback: grpc.sendUnaryData<CoordinatorStatus>) =>
        callback(null, buildStatus(deps, call.request.recentJobs)),
      Monitor: (call: grpc.ServerWritableStream<{ recentJobs: number }, CoordinatorStatus>) => {
        monitors.add(call);
        let last = '';
        let lastSent = 0;
        const tick = () => {
          if (call.cancelled || call.destroyed) return;
          const status = buildStatus(deps, call.request.recentJobs);
          // Ages of running jobs change every tick; compare without them, send them with the rest.
          const key = JSON.stringify({ ...status, hostStatus: status.hostStatus?.map((h) => ({ ...h, running: h.running?.map((r) => r.source) })) });
          if (key !== last || Date.now() - lastSent >= MONITOR_HEARTBEAT_MS) {
            last = key;
            lastSent = Date.now();
            call.write(status);
          }
        };
        const timer = setInterval(tick, MONITOR_TICK_MS);
        const stop = () => {
          clearInterval(timer);
          monitors.delete(call);
        };
        call.once('cancelled', stop);
        call.once('close', stop);
        call.once('error', stop);
        tick();
      },
      GetStats: (call: grpc.ServerUnaryCall<{ zero: boolean }, Stats>, callback: grpc.sendUnaryData<Stats>) => {
        deps.stats.ingestLauncherFallbacks();
        const snapshot = JSON.parse(JSON.stringify(deps.stats.stats)) as Stats;
        if (call.request.zero) deps.stats.zero();
        callback(null, snapshot);
      },
      Stop: (_call: grpc.ServerUnaryCall<unknown, { pid: number }>, callback: grpc.sendUnaryData<{ pid: number }>) => {
        callback(null, { pid: process.pid });
        setImmediate(deps.stop);
      },
    },
  };
}
