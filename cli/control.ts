/** A client for the coordinator's control socket, for the `ferry` commands. */
import { existsSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { loadCoordinatorProto } from '../proto/load';
import type { CoordinatorStatus__Output } from '../proto/generated/ferry/coordinator/v1/CoordinatorStatus';
import type { Stats__Output } from '../proto/generated/ferry/coordinator/v1/Stats';
import type { StopReply__Output } from '../proto/generated/ferry/coordinator/v1/StopReply';
import { runtimePaths } from '../coordinator/paths';

const DEADLINE_MS = 5000;

type Callback<T> = (err: grpc.ServiceError | null, value?: T) => void;

/** Settles undefined when no coordinator answers (not running), the reply otherwise. */
function settle<T>(resolve: (v: T | undefined) => void, reject: (e: Error) => void): Callback<T> {
  return (err, value) => {
    if (err?.code === grpc.status.UNAVAILABLE) resolve(undefined);
    else if (err) reject(err);
    else resolve(value);
  };
}

export class Control {
  private constructor(private readonly client: InstanceType<ReturnType<typeof loadCoordinatorProto>['ferry']['coordinator']['v1']['Coordinator']>) {}

  /** A client, or undefined when no coordinator has a control socket. */
  static open(env: NodeJS.ProcessEnv = process.env): Control | undefined {
    const { control } = runtimePaths(env);
    if (!existsSync(control)) return undefined;
    const proto = loadCoordinatorProto();
    return new Control(new proto.ferry.coordinator.v1.Coordinator(`unix://${control}`, grpc.credentials.createInsecure()));
  }

  private get options(): grpc.CallOptions {
    return { deadline: Date.now() + DEADLINE_MS };
  }

  status(recentJobs = 0): Promise<CoordinatorStatus__Output | undefined> {
    return new Promise((resolve, reject) => this.client.Status({ recentJobs }, this.options, settle(resolve, reject)));
  }

  stats(zero = false): Promise<Stats__Output | undefined> {
    return new Promise((resolve, reject) => this.client.GetStats({ zero }, this.options, settle(resolve, reject)));
  }

  /** Live status: `onStatus` for each picture; resolves when the stream ends (cancel() ends it). */
  monitor(recentJobs: number, onStatus: (status: CoordinatorStatus__Output) => void): { done: Promise<void>; cancel: () => void } {
    const call = this.client.Monitor({ recentJobs });
    call.on('data', onStatus);
    const done = new Promise<void>((resolve, reject) => {
      call.on('end', () => resolve());
      call.on('error', (err: grpc.ServiceError) => (err.code === grpc.status.CANCELLED ? resolve() : reject(err)));
    });
    return { done, cancel: () => call.cancel() };
  }

  stop(): Promise<StopReply__Output | undefined> {
    return new Promise((resolve, reject) => this.client.Stop({}, this.options, settle(resolve, reject)));
  }

  close(): void {
    this.client.close();
  }
}
