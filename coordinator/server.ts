/**
 * The coordinator daemon: the launcher socket (one framed LaunchRequest in, one LaunchReply out
 * per connection) and the gRPC control socket for the `ferry` commands.
 */
import { closeSync, mkdirSync, statSync, writeSync } from 'node:fs';
import { unlink } from 'node:fs/promises';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { FerryError, errorMessage } from '../proto/errors';
import { loadCoordinatorProto, loadLauncherCodec } from '../proto/load';
import { shutdownGracefully } from '../proto/shutdown';
import { FERRY_VERSION } from '../proto/version';
import { controlService } from './control-service';
import type { JobRecord } from '../proto/generated/ferry/coordinator/v1/JobRecord';
import { Slots } from '../worker/slots';
import type { Host } from './host';
import type { LaunchReply } from '../proto/generated/ferry/launcher/v1/LaunchReply';
import { runJob, type JobContext, type JobOutcome } from './job';
import { DriverTemplates } from './driver-template';
import { runDriver } from '../proto/driver-commands';
import { FORK_SERVER_LIBRARY, ForkServers } from '../proto/fork-server';
import { makePreprocessDir, removePreprocessDir } from './preprocess-dir';
import { LocalSlots } from './local-slots';
import { Notices } from './notices';
import { runtimePaths, stateDir, type RuntimePaths } from './paths';
import { HostPool } from './pool';
import { Scheduler } from './scheduler';
import { StatsStore } from './stats';

const MAX_FRAME_BYTES = 16 << 20;
const RECENT_JOBS_KEPT = 1000;
const MAX_QUEUED_JOBS = 4096;

export interface CoordinatorOptions {
  env?: NodeJS.ProcessEnv;
  /** Exit after this long without jobs; 0 never. */
  idleTimeoutMs?: number;
  log?: (line: string) => void;
}

export interface RunningCoordinator {
  paths: RuntimePaths;
  stopped: Promise<void>;
  stop(): Promise<void>;
}

/** Reads one length-prefixed frame; resolves undefined if the peer closes first. */
function readFrame(socket: Socket): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    let buffered: Buffer = Buffer.alloc(0);
    const onData = (data: Buffer) => {
      buffered = buffered.length ? Buffer.concat([buffered, data]) : data;
      if (buffered.length < 4) return;
      const length = buffered.readUInt32LE(0);
      if (length > MAX_FRAME_BYTES) {
        cleanup();
        reject(new FerryError('bad-frame', `launcher frame of ${length} bytes is over ${MAX_FRAME_BYTES}`));
        return;
      }
      if (buffered.length >= 4 + length) {
        cleanup();
        resolve(buffered.subarray(4, 4 + length));
      }
    };
    const onEnd = () => {
      cleanup();
      resolve(undefined);
    };
    const cleanup = () => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
    };
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('close', onEnd);
  });
}

function frame(payload: Buffer): Buffer {
  const header = Buffer.alloc(4);
  header.writeUInt32LE(payload.length, 0);
  return Buffer.concat([header, payload]);
}

/** Another coordinator answering on the socket means this one is not needed. */
function socketIsLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createConnection(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

async function listenUnix(server: Server, path: string): Promise<void> {
  await unlink(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function prepareRuntimeDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const info = statSync(dir);
  if (process.getuid && info.uid !== process.getuid()) {
    throw new FerryError('runtime-dir-unsafe', `${dir} belongs to another user`, 'Set FERRY_RUNTIME_DIR to a directory of your own.');
  }
  if (info.mode & 0o022) {
    throw new FerryError('runtime-dir-unsafe', `${dir} is writable by other users`, `chmod 700 ${dir}`);
  }
}

export async function startCoordinator(options: CoordinatorOptions = {}): Promise<RunningCoordinator> {
  const env = options.env ?? process.env;
  const log = options.log ?? ((line: string) => process.stderr.write(`${new Date().toISOString()} ${line}\n`));
  const paths = runtimePaths(env);
  prepareRuntimeDir(paths.dir);
  if (await socketIsLive(paths.socket)) {
    throw new FerryError('already-running', `a coordinator already answers on ${paths.socket}`, 'Use `ferry stop` first.');
  }

  const stats = new StatsStore(join(stateDir(env), 'stats.json'), paths.launcherFallbacks);
  stats.ingestLauncherFallbacks();
  const recent: JobRecord[] = [];
  let running = 0;
  let jobsDone = 0;
  let lastActivity = Date.now();
  const scheduler = new Scheduler<Host>(MAX_QUEUED_JOBS);
  const pool = new HostPool({ tunnelDir: paths.tunnels, log }, () => scheduler.pump());
  const context: JobContext = {
    pool,
    scheduler,
    localSlots: new LocalSlots(),
    remoteBound: { count: 0 },
    cppSlots: new Slots(Math.max(1, availableParallelism())),
    stats,
    notices: new Notices(),
    log,
    preprocessDir: makePreprocessDir(join(paths.dir, 'cpp'), '/dev/shm', log),
    driverTemplates: new DriverTemplates(runDriver, log),
    forkServers: new ForkServers(paths.dir, log, FORK_SERVER_LIBRARY, 'huge-pages'),
    record: (job) => {
      jobsDone++;
      recent.push(job);
      if (recent.length > RECENT_JOBS_KEPT) recent.shift();
    },
  };
  const codec = loadLauncherCodec();

  const launcherServer = createServer((socket) => {
    socket.on('error', (err) => log(`launcher connection: ${err.message}`));
    const aborter = new AbortController();
    // Only a launcher that leaves before its reply cancels anything (an error object per job costs).
    let replied = false;
    socket.once('close', () => {
      if (!replied) aborter.abort(new FerryError('cancelled', 'the launcher went away'));
    });
    running++;
    lastActivity = Date.now();
    (async () => {
      const payload = await readFrame(socket);
      if (!payload) return;
      const request = codec.decodeRequest(payload);
      let outcome: JobOutcome;
      try {
        // A PREPROCESS reply and the launcher's PreprocessResult go back and forth on this connection.
        const ask = async (reply: LaunchReply) => {
          socket.write(frame(codec.encodeReply(reply)));
          const answer = await readFrame(socket);
          if (!answer) throw new FerryError('cancelled', 'the launcher went away while preprocessing');
          return codec.decodePreprocessResult(answer);
        };
        outcome = await runJob(request, context, ask, aborter.signal);
      } catch (err) {
        if (aborter.signal.aborted) return;
        // A fault of Ferry's own: the build must go on, locally, and the user must hear of it.
        log(`job failed inside the coordinator: ${errorMessage(err)}`);
        stats.countLocal('coordinator-error');
        outcome = { reply: { action: 'RUN_LOCALLY', notice: `ferry: internal error (${errorMessage(err)}); compiling locally` } };
      }
      const { reply, releaseOnClose } = outcome;
      replied = true;
      if (socket.destroyed) {
        releaseOnClose?.();
        return;
      }
      if (releaseOnClose) {
        // The launcher's compiler inherits this connection; its exit closes it and frees the slot.
        socket.once('close', releaseOnClose);
        socket.write(frame(codec.encodeReply(reply)));
      } else {
        socket.end(frame(codec.encodeReply(reply)));
      }
    })()
      .catch((err: unknown) => {
        log(`launcher request: ${errorMessage(err)}`);
        socket.destroy();
      })
      .finally(() => {
        running--;
        lastActivity = Date.now();
      });
  });

  const proto = loadCoordinatorProto();
  const control = new grpc.Server();
  let stopping: Promise<void> | undefined;
  let resolveStopped!: () => void;
  const stopped = new Promise<void>((resolve) => (resolveStopped = resolve));

  const startedAt = new Date().toISOString();
  const controlHandlers = controlService({
    pool,
    scheduler,
    localSlots: context.localSlots,
    stats,
    recent,
    startedAt,
    running: () => running,
    jobsDone: () => jobsDone,
    stop: () => void stop(),
  });
  control.addService(proto.ferry.coordinator.v1.Coordinator.service, controlHandlers.handlers);

  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      clearInterval(idleTimer);
      log('stopping');
      launcherServer.close();
      controlHandlers.endStreams();
      await shutdownGracefully(control, 2000);
      pool.close();
      context.forkServers?.close();
      removePreprocessDir(context.preprocessDir, join(paths.dir, 'cpp'));
      stats.flush();
      await Promise.all([unlink(paths.socket).catch(() => undefined), unlink(paths.control).catch(() => undefined)]);
      resolveStopped();
    })();
    return stopping;
  };

  // The launcher socket last, so a launcher that connects finds everything ready.
  await unlink(paths.control).catch(() => undefined);
  await new Promise<void>((resolve, reject) =>
    control.bindAsync(`unix:${paths.control}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
  );
  await listenUnix(launcherServer, paths.socket);

  const idleTimeoutMs = options.idleTimeoutMs ?? 0;
  const idleTimer = setInterval(() => {
    if (idleTimeoutMs > 0 && running === 0 && Date.now() - lastActivity > idleTimeoutMs) {
      log(`idle for ${Math.round(idleTimeoutMs / 1000)} s`);
      void stop();
    }
  }, Math.min(30_000, Math.max(1000, idleTimeoutMs / 4 || 30_000)));
  idleTimer.unref();

  log(`coordinator ${FERRY_VERSION} (pid ${process.pid}) listening on ${paths.socket}; ${sshCryptoNote()}`);
  return { paths, stopped, stop };
}

/** Tells the launcher that started us (fd 3 is its pipe) that the socket is ready. */
export function signalReady(): void {
  try {
    writeSync(3, 'R');
    closeSync(3);
  } catch (err) {
    // Started by hand (`ferry coordinator --foreground`): there is no pipe to tell.
    if ((err as NodeJS.ErrnoException).code !== 'EBADF') throw err;
  }
}

/**
 * Whether ssh2 found its optional native AES-GCM binding (see cli/build.mjs): without it every SSH
 * packet is encrypted through a new JS cipher object, about 0.5 ms more coordinator CPU per job
 * (npm run bench, (b)).
 */
export function sshCryptoNote(): string {
  const crypto = require('ssh2/lib/protocol/crypto.js') as { bindingAvailable?: boolean };
  return crypto.bindingAvailable
    ? 'ssh2 native crypto binding in use'
    : 'ssh2 native crypto binding missing (npm run build makes it where Node\'s headers are installed), SSH costs more CPU';
}
