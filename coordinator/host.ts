/**
 * One remote host: its SSH connection, the tunnel to its worker, the gRPC client through that
 * tunnel, and what the worker said about itself. A host that fails is marked down and tried again
 * after a backoff; jobs meanwhile go elsewhere.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Client } from 'ssh2';
import { FerryError, errorMessage } from '../proto/errors';
import { loadWorkerProto } from '../proto/load';
import type { WorkerClient } from '../proto/generated/ferry/v1/Worker';
import type { WorkerDescription__Output } from '../proto/generated/ferry/v1/WorkerDescription';
import type { WorkerLoad__Output } from '../proto/generated/ferry/v1/WorkerLoad';
import type { CompilerInfo__Output } from '../proto/generated/ferry/v1/CompilerInfo';
import type { LocalCompiler } from './compiler-id';
import type { HostSpec } from './hosts';
import { resolveSshTarget } from './ssh-config';
import { connectSsh } from './ssh-connection';
import { openTunnel, type Tunnel } from './tunnel';
import { WorkerJobs } from './remote-compile';

export type HostState = 'new' | 'connecting' | 'up' | 'down';

export interface HostContext {
  env: NodeJS.ProcessEnv;
  tunnelDir: string;
  log: (line: string) => void;
}

const FIRST_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 60_000;
const DESCRIBE_DEADLINE_MS = 15_000;
/** ssh2 gives up after 3 unanswered keepalives: a vanished host (cable, veth down) is noticed in ~15 s. */
const SSH_KEEPALIVE_MS = 5000;

/** Channel options: the tunnel is a local socket, so no DNS, and keep the one connection busy. */
const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.max_receive_message_length': 64 << 20,
  'grpc.max_send_message_length': 64 << 20,
  'grpc.enable_retries': 0,
  'grpc.keepalive_time_ms': 30_000,
  'grpc.keepalive_timeout_ms': 20_000,
};

/**
 * Compilers match when the name, the first line of --version and the target all agree, and, when
 * the user asks for it (FERRY_MATCH_BINARY=1), the executables' hashes too.
 */
export function compilerMatches(local: LocalCompiler, remote: CompilerInfo__Output | undefined, sameBinary = false): boolean {
  if (!remote || remote.version !== local.version || remote.target !== local.target) return false;
  return !sameBinary || remote.sha256 === local.sha256;
}

export class Host {
  state: HostState = 'new';
  lastError?: string;
  description?: WorkerDescription__Output;
  client?: WorkerClient;
  /** The stream this host's jobs go over. */
  jobs?: WorkerJobs;
  inUse = 0;
  jobsDone = 0;
  failures = 0;
  /** Compilers jobs asked for that this host lacks in the same version, by name. */
  readonly compilerMismatches = new Map<string, string>();
  /** This coordinator's jobs on the host now, by job id. */
  readonly running = new Map<string, { source: string; started: number }>();
  /** The worker's own count of its jobs (all initiators'), from its Watch stream. */
  load?: WorkerLoad__Output;
  private watch?: grpc.ClientReadableStream<WorkerLoad__Output>;
  private retryAt = 0;
  private backoffMs = FIRST_BACKOFF_MS;
  private connecting?: Promise<void>;
  private ssh?: Client;
  private tunnel?: Tunnel;
  private closed = false;

  /** `onChange` runs when the host goes up or down, so queued jobs can be placed or failed. */
  constructor(
    readonly spec: HostSpec,
    private readonly context: HostContext,
    private readonly onChange: () => void = () => undefined,
  ) {}

  /** Connected; the scheduler places jobs only on usable hosts. */
  get usable(): boolean {
    return this.state === 'up';
  }

  get name(): string {
    return this.spec.name;
  }

  /** Slots the coordinator fills: the user's /N, else what the worker advertises. */
  get slots(): number {
    return this.spec.slots ?? this.load?.slots ?? this.description?.slots ?? 1;
  }

  /**
   * Slots taken: our jobs, or what the worker counts when that is more (other initiators' jobs).
   * Our finished jobs may linger in the worker's count for a moment, until its next update.
   */
  get busy(): number {
    return Math.max(this.inUse, (this.load?.running ?? 0) + (this.load?.queued ?? 0));
  }

  remoteCompiler(name: string): CompilerInfo__Output | undefined {
    return this.description?.compilers.find((c) => c.name === name);
  }

  /** Whether this host can take jobs for `local`; a mismatch is remembered for `ferry status`. */
  accepts(local: LocalCompiler): boolean {
    const remote = this.remoteCompiler(local.name);
    const sameBinary = this.context.env.FERRY_MATCH_BINARY === '1';
    if (compilerMatches(local, remote, sameBinary)) return true;
    if (this.description && !this.compilerMismatches.has(local.name)) {
      const there = !remote
        ? 'not installed or not allowed'
        : compilerMatches(local, remote)
          ? `the same version but another binary (sha256 ${remote.sha256.slice(0, 12)}…, here ${local.sha256.slice(0, 12)}…; FERRY_MATCH_BINARY=1)`
          : `"${remote.version}" for ${remote.target}`;
      this.compilerMismatches.set(local.name, `${local.name}: here "${local.version}" for ${local.target}, there ${there}`);
      this.context.log(`${this.name}: skipped for ${this.compilerMismatches.get(local.name)}`);
    }
    return false;
  }

  /** Resolves when the host is up; rejects at once while it is down and waiting for its retry. */
  ensureUp(): Promise<void> {
    if (this.state === 'up') return Promise.resolve();
    if (this.connecting) return this.connecting;
    if (this.state === 'down' && Date.now() < this.retryAt) {
      return Promise.reject(new FerryError('host-down', `${this.name} is down: ${this.lastError}`));
    }
    this.state = 'connecting';
    this.connecting = this.connect().then(
      () => {
        this.connecting = undefined;
        this.state = 'up';
        this.backoffMs = FIRST_BACKOFF_MS;
        this.lastError = undefined;
        const compilers = this.description?.compilers.map((c) => c.name).join(', ');
        this.context.log(`${this.name}: up, worker ${this.description?.version} with ${this.slots} slots (${compilers})`);
        this.onChange();
      },
      (err: unknown) => {
        this.connecting = undefined;
        this.markDown(err);
        throw err;
      },
    );
    return this.connecting;
  }

  /** The host failed (connection, tunnel, or worker): drop everything and retry later. */
  markDown(err: unknown): void {
    if (this.closed || this.state === 'down') return;
    const message = errorMessage(err).replace(/\n\s*/g, ' ');
    this.context.log(`${this.name}: down: ${message}`);
    this.state = 'down';
    this.lastError = message;
    this.retryAt = Date.now() + this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
    this.teardown();
    this.onChange();
  }

  close(): void {
    this.closed = true;
    this.teardown();
  }

  private teardown(): void {
    const watch = this.watch;
    this.watch = undefined;
    this.load = undefined;
    watch?.cancel();
    this.jobs?.close();
    this.jobs = undefined;
    this.client?.close();
    this.client = undefined;
    const tunnel = this.tunnel;
    this.tunnel = undefined;
    tunnel?.close().catch((err: unknown) => this.context.log(`${this.name}: closing tunnel: ${errorMessage(err)}`));
    this.ssh?.end();
    this.ssh = undefined;
  }

  private async connect(): Promise<void> {
    const proto = loadWorkerProto();
    let target: string;
    if (this.spec.kind === 'direct') {
      target = `unix://${(this.spec.worker as { path: string }).path}`;
    } else {
      const sshTarget = await resolveSshTarget(this.spec.alias!, this.context.env, { user: this.spec.user, port: this.spec.sshPort });
      const ssh = await connectSsh(sshTarget, { agentSocket: this.context.env.SSH_AUTH_SOCK, keepaliveIntervalMs: SSH_KEEPALIVE_MS, log: this.context.log });
      if (this.closed) {
        ssh.end();
        throw new FerryError('host-closed', `${this.name} was removed while connecting`);
      }
      this.ssh = ssh;
      // Events of a connection already replaced or torn down are not about this host any more.
      ssh.on('close', () => {
        if (this.ssh === ssh) this.markDown(new FerryError('ssh-closed', `SSH connection to ${this.name} closed`));
      });
      ssh.on('error', (err) => {
        if (this.ssh === ssh) this.markDown(err);
      });
      await mkdir(this.context.tunnelDir, { recursive: true, mode: 0o700 });
      const socketName = this.spec.name.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 40);
      const destination =
        this.spec.worker.kind === 'tcp'
          ? ({ kind: 'tcp', host: '127.0.0.1', port: this.spec.worker.port } as const)
          : ({ kind: 'unix', path: this.spec.worker.path } as const);
      this.tunnel = await openTunnel(ssh, destination, join(this.context.tunnelDir, `${socketName}.sock`));
      this.tunnel.on('error', (err) => this.context.log(`${this.name}: tunnel: ${errorMessage(err)}`));
      target = `unix://${this.tunnel.path}`;
    }
    this.client = new proto.ferry.v1.Worker(target, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
    this.jobs = new WorkerJobs(this.client);
    this.description = await this.describe();
    this.startWatch(this.client);
  }

  /** Follows the worker's load; the stream ending means the worker went away. */
  private startWatch(client: WorkerClient): void {
    const watch = client.Watch({});
    this.watch = watch;
    watch.on('data', (load: WorkerLoad__Output) => {
      if (this.watch !== watch) return;
      this.load = load;
      this.onChange();
    });
    const lost = (why: string) => {
      if (this.watch === watch) this.markDown(new FerryError('worker-lost', `${this.name}: the worker's load stream ${why}`));
    };
    watch.on('error', (err: grpc.ServiceError) => lost(`failed: ${err.details || err.message}`));
    watch.on('end', () => lost('ended'));
  }

  describe(): Promise<WorkerDescription__Output> {
    const client = this.client;
    if (!client) return Promise.reject(new FerryError('host-down', `${this.name} is not connected`));
    return new Promise((resolve, reject) =>
      client.Describe({}, { deadline: Date.now() + DESCRIBE_DEADLINE_MS }, (err, reply) => {
        if (err || !reply) {
          const where = this.spec.kind === 'direct' ? (this.spec.worker as { path: string }).path : `${this.spec.alias}'s worker`;
          reject(
            new FerryError(
              'worker-unreachable',
              `${this.name}: no worker answered at ${where}: ${err?.details || err?.message}`,
              this.spec.kind === 'direct'
                ? 'Start ferry-worker with --listen unix:<that path>.'
                : `Is ferry-worker running on ${this.spec.alias} (systemctl status ferry-worker)? FERRY_HOSTS names its port with ,port=N or its socket with ,socket=/path.`,
            ),
          );
        } else {
          resolve(reply);
        }
      }),
    );
  }
}
