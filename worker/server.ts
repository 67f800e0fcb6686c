/** The worker's gRPC server: the Worker service and gRPC's standard health service. */
import { execFile } from 'node:child_process';
import { chmod, chown, lstat, mkdtemp, rm, unlink } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { FerryError, errorMessage } from '../proto/errors';
import { loadWorkerProto } from '../proto/load';
import { makeShmDir } from '../proto/shm-dir';
import { shutdownGracefully } from '../proto/shutdown';
import { FERRY_VERSION } from '../proto/version';
import type { WorkerDescription } from '../proto/generated/ferry/v1/WorkerDescription';
import type { WorkerLoad } from '../proto/generated/ferry/v1/WorkerLoad';
import type { ArgPolicy } from './arg-policy';
import type { CompilerTable } from './compilers';
import { makeJobHandler, type WorkerCounters, type WorkerLimits } from './compile';
import { FORK_SERVER_LIBRARY, ForkServers } from '../proto/fork-server';
import { ExecHelper } from './exec-helper';
import { JobDirs } from './job-dirs';
import { CompileTemplates } from './compile-steps';
import { http2SessionOf, serveJobStream, type JobsStream } from './job-stream';
import { grpcBindTarget, isLocalPeer, type ListenAddress } from './listen';
import { Slots } from './slots';

/** Longest a load change waits to be sent (see watch()). */
const WATCH_COALESCE_MS = 50;
const WATCH_HEARTBEAT_MS = 5000;
/** Jobs open at once on one stream: far more than any host has slots. */
const MAX_OPEN_JOBS = 4096;

export interface WorkerOptions {
  listen: ListenAddress;
  slots: number;
  compilers: CompilerTable;
  limits: WorkerLimits;
  argPolicy?: ArgPolicy;
  /** Group given the Unix socket: its members may submit jobs. */
  socketGroup?: string;
  /** Parent of the private job directories. */
  tmpBase?: string;
  /** The compiler-starting helper binary (worker/exec-helper.ts finds the built one by default). */
  execHelperPath?: string;
  /** gcc jobs run cc1 and as directly once learnt (compile-steps.ts); default true. */
  compileWithoutDriver?: boolean;
  log?: (line: string) => void;
}

export interface RunningWorker {
  /** The bound address as a client would dial it ("127.0.0.1:3633" or "unix:/path"). */
  address: string;
  counters: WorkerCounters;
  slots: Slots;
  stop(): Promise<void>;
}

/** The gid in a `getent group` line ("ferry:x:998:alice,bob"); undefined when it is not one. */
export function parseGroupEntry(line: string, name: string): number | undefined {
  const [entryName, , gidText] = line.trim().split(':');
  if (entryName !== name || !/^\d+$/.test(gidText ?? '')) return undefined;
  return Number(gidText);
}

/** Looks a group up through NSS (getent), as ls and chgrp do, so LDAP and sssd groups work too. */
function groupId(name: string): Promise<number> {
  const missing = () =>
    new FerryError('socket-group-missing', `socket group "${name}" does not exist on this machine`,
      `Create it (sudo groupadd --system ${name}) and add the users who may submit jobs (sudo usermod -aG ${name} USER), or change socket_group.`);
  return new Promise((resolve, reject) => {
    execFile('getent', ['group', '--', name], { timeout: 10_000 }, (err, stdout) => {
      // getent exits 2 for a name it does not know.
      if (err && (err as { code?: unknown }).code === 2) return reject(missing());
      if (err) return reject(new FerryError('socket-group-lookup-failed', `cannot look up group "${name}": ${errorMessage(err)}`, 'Check that getent (libc-bin) is installed.'));
      const gid = parseGroupEntry(stdout.split('\n')[0], name);
      if (gid === undefined) reject(missing());
      else resolve(gid);
    });
  });
}

/** Gives the socket to `group`; the worker must be root or a member of it. */
async function chgrpSocket(path: string, group: string): Promise<void> {
  const gid = await groupId(group);
  try {
    // -1: keep the owner.
    await chown(path, -1, gid);
  } catch (err) {
    throw new FerryError('socket-group-failed', `cannot give ${path} to group "${group}": ${errorMessage(err)}`,
      `Run ferry-worker as root or as a member of "${group}" (sudo usermod -aG ${group} <worker user>).`, { cause: err });
  }
}

/** Removes a leftover socket file from a worker that died; refuses to delete anything else. */
async function clearStaleSocket(path: string): Promise<void> {
  let info;
  try {
    info = await lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!info.isSocket()) {
    throw new FerryError('listen-invalid', `${path} exists and is not a socket`, 'Choose another --listen path or remove the file.');
  }
  await unlink(path);
}

export async function startWorker(options: WorkerOptions): Promise<RunningWorker> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const proto = loadWorkerProto();
  const slots = new Slots(options.slots);
  const counters: WorkerCounters = { jobsDone: 0 };
  // One private directory (0700) per worker run; each running job has its own directory below it.
  // Without a tmpdir set, on /dev/shm: a job's files live for the job (proto/shm-dir.ts says why).
  const tmpRoot =
    (options.tmpBase === undefined ? makeShmDir('worker', '/dev/shm', (reason) => log(`job directories go to ${tmpdir()}: ${reason}`)) : undefined) ??
    (await mkdtemp(join(options.tmpBase ?? tmpdir(), 'ferry-worker-')));

  const load = (): WorkerLoad => ({ slots: slots.size, running: slots.inUse, queued: slots.queued, jobsDone: counters.jobsDone });
  const watchers = new Set<grpc.ServerWritableStream<unknown, WorkerLoad>>();
  const watch = (call: grpc.ServerWritableStream<unknown, WorkerLoad>) => {
    watchers.add(call);
    // Every job changes the load twice, and each update costs every watching coordinator an SSH
    // packet and a gRPC message: changes are sent at most every WATCH_COALESCE_MS. A coordinator
    // counts its own jobs itself; this only tells it about everyone else's, a little later.
    let pending: NodeJS.Timeout | undefined;
    const send = () => {
      clearTimeout(pending);
      pending = undefined;
      if (!call.cancelled && !call.destroyed) call.write(load());
    };
    const onChange = () => {
      pending ??= setTimeout(send, WATCH_COALESCE_MS);
    };
    slots.on('change', onChange);
    // A heartbeat, so a client notices a silent worker, and sees jobs_done move.
    const heartbeat = setInterval(send, WATCH_HEARTBEAT_MS);
    const stop = () => {
      watchers.delete(call);
      slots.off('change', onChange);
      clearInterval(heartbeat);
      clearTimeout(pending);
    };
    call.once('cancelled', stop);
    call.once('close', stop);
    call.once('error', stop);
    send();
  };
  const server = new grpc.Server({
    'grpc.max_receive_message_length': 64 << 20,
    'grpc.max_send_message_length': 64 << 20,
  });
  // Started now, so that a helper that cannot be used is in the log from the start.
  const exec = new ExecHelper({ path: options.execHelperPath, log });
  exec.start();
  // cc1 and as forked from started copies (~2 ms less of each per job than exec, its loader and
  // libraries' start-up), when they run without the driver. FERRY_FORK_SERVER=0 turns them off.
  const forkServers = options.compileWithoutDriver === false || process.env.FERRY_FORK_SERVER === '0' ? undefined : new ForkServers(tmpRoot, log, FORK_SERVER_LIBRARY, 'populate');
  const handleJob = makeJobHandler({
    compilers: options.compilers,
    slots,
    jobDirs: new JobDirs(tmpRoot, options.slots, log),
    limits: options.limits,
    argPolicy: options.argPolicy ?? { allowedSysroots: [] },
    counters,
    exec,
    compileSteps: options.compileWithoutDriver === false ? undefined : new CompileTemplates(log),
    forkServers,
    log,
  });
  const streamLimits = { maxHeldBytes: options.limits.maxCompressedSourceBytes, maxOpenJobs: MAX_OPEN_JOBS };
  server.addService(proto.ferry.v1.Worker.service, {
    Jobs: (call: JobsStream) => {
      // On a Unix socket the file's permissions decide who connects; on TCP only loopback peers.
      if (options.listen.kind !== 'unix' && !isLocalPeer(call.getPeer())) {
        log(`refused a job stream from ${call.getPeer()}: only local clients are served`);
        call.emit('error', { code: grpc.status.PERMISSION_DENIED, details: `refusing jobs from ${call.getPeer()}: only local clients are served` });
        return;
      }
      serveJobStream(call, http2SessionOf(call), streamLimits, handleJob);
    },
    Watch: watch,
    Describe: (
      _call: grpc.ServerUnaryCall<unknown, WorkerDescription>,
      callback: grpc.sendUnaryData<WorkerDescription>,
    ) => {
      callback(null, {
        version: FERRY_VERSION,
        hostname: hostname(),
        slots: slots.size,
        compilers: [...options.compilers.byName.values()],
        running: slots.inUse,
        queued: slots.queued,
        jobsDone: counters.jobsDone,
      });
    },
  });
  const health = new HealthImplementation({ '': 'SERVING', 'ferry.v1.Worker': 'SERVING' });
  health.addToServer(server);

  if (options.listen.kind === 'unix') await clearStaleSocket(options.listen.path);
  const target = grpcBindTarget(options.listen);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(target, grpc.ServerCredentials.createInsecure(), (err, boundPort) =>
      err
        ? reject(new FerryError('listen-failed', `cannot listen on ${target}: ${err.message}`, 'Is another worker running there? Choose another --listen.'))
        : resolve(boundPort),
    ),
  ).catch(async (err: unknown) => {
    forkServers?.close();
    await exec.close();
    throw err;
  });
  // Only the owner and its group (users allowed to submit jobs) may connect to the socket. The
  // group changes first: until chmod gives the group write access, it cannot connect.
  if (options.listen.kind === 'unix') {
    try {
      if (options.socketGroup) await chgrpSocket(options.listen.path, options.socketGroup);
      await chmod(options.listen.path, 0o660);
    } catch (err) {
      server.forceShutdown();
      forkServers?.close();
      await exec.close();
      await rm(tmpRoot, { recursive: true, force: true });
      await rm(options.listen.path, { force: true });
      throw err;
    }
  }
  const address =
    options.listen.kind === 'unix' ? `unix:${options.listen.path}` : grpcBindTarget({ ...options.listen, port });

  return {
    address,
    counters,
    slots,
    async stop() {
      // Watch streams never end by themselves; end them so the shutdown need not wait them out.
      for (const call of watchers) call.end();
      await shutdownGracefully(server, 5000);
      forkServers?.close();
      await exec.close();
      await rm(tmpRoot, { recursive: true, force: true });
      if (options.listen.kind === 'unix') await rm(options.listen.path, { force: true });
    },
  };
}
