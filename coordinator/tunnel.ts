/**
 * A local Unix-socket listener whose connections are carried over one SSH connection to the worker's loopback port
 * or Unix socket. grpc-js cannot be handed a socket, so it dials `unix://<path>` and this forwards.
 */
import { EventEmitter } from 'node:events';
import { chmod, mkdir, unlink } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import type { Duplex } from 'node:stream';
import type { Client } from 'ssh2';
import { FerryError } from '../proto/errors';

export type TunnelDestination = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

export interface Tunnel {
  /** The local socket path to dial. */
  readonly path: string;
  close(): Promise<void>;
  /** Forwarding failures (the local connection is already closed); listen, or an emitted error throws. */
  on(event: 'error', listener: (err: FerryError) => void): this;
}

/** sockaddr_un's sun_path is 108 bytes on Linux, including the terminating NUL. */
const MAX_UNIX_PATH_BYTES = 107;

export function describeDestination(d: TunnelDestination): string {
  return d.kind === 'tcp' ? `${d.host}:${d.port}` : `unix:${d.path}`;
}

function openChannel(conn: Client, d: TunnelDestination, cb: (err: Error | undefined, ch?: Duplex) => void): void {
  if (d.kind === 'tcp') {
    // The originator address is informational for sshd; loopback says "a local client".
    conn.forwardOut('127.0.0.1', 0, d.host, d.port, (err, ch) => cb(err, ch));
  } else {
    conn.openssh_forwardOutStreamLocal(d.path, (err, ch) => cb(err, ch));
  }
}

class SshTunnel extends EventEmitter implements Tunnel {
  private readonly sockets = new Set<Socket>();
  private readonly channels = new Set<Duplex>();
  private closing?: Promise<void>;

  constructor(
    readonly path: string,
    private readonly server: Server,
    private readonly conn: Client,
    private readonly destination: TunnelDestination,
  ) {
    super();
    server.on('connection', (socket) => this.accept(socket));
  }

  private accept(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    // Until the channel exists, a local error only has to end the local side.
    socket.on('error', () => socket.destroy());
    openChannel(this.conn, this.destination, (err, channel) => {
      if (err || !channel) {
        socket.destroy();
        this.emit('error', new FerryError('tunnel-open-failed',
          `cannot open a forwarded channel to ${describeDestination(this.destination)}: ${err?.message ?? 'no channel'}`,
          'Check that the worker runs and listens there, and that sshd allows forwarding (AllowTcpForwarding / AllowStreamLocalForwarding).',
          { cause: err }));
        return;
      }
      if (this.closing || socket.destroyed) {
        channel.destroy();
        return;
      }
      this.channels.add(channel);
      // Plain pipes both ways: no per-chunk work on the coordinator's hot path; half-closes propagate as 'end'.
      socket.pipe(channel).pipe(socket);
      channel.on('close', () => {
        this.channels.delete(channel);
        socket.end();
      });
      channel.on('error', () => socket.destroy());
      socket.on('close', () => channel.destroy());
    });
  }

  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve, reject) => {
      this.server.close((err) => {
        unlink(this.path).then(
          () => (err ? reject(err) : resolve()),
          (unlinkErr: NodeJS.ErrnoException) =>
            unlinkErr.code === 'ENOENT' && !err ? resolve() : reject(err ?? unlinkErr),
        );
      });
      for (const s of this.sockets) s.destroy();
      for (const c of this.channels) c.destroy();
    });
    return this.closing;
  }
}

/** Listens on `listenPath` (0600, stale file replaced) and forwards each connection over `conn` to `destination`. */
export async function openTunnel(conn: Client, destination: TunnelDestination, listenPath: string): Promise<Tunnel> {
  if (Buffer.byteLength(listenPath) > MAX_UNIX_PATH_BYTES) {
    throw new FerryError('tunnel-listen-failed', `tunnel socket path is too long for a Unix socket: ${listenPath}`,
      'Use a shorter FERRY_RUNTIME_DIR.');
  }
  await mkdir(dirname(listenPath), { recursive: true, mode: 0o700 });
  try {
    await unlink(listenPath); // a previous coordinator's socket; nothing can be listening on it once we own the dir
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const server = createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void =>
      reject(new FerryError('tunnel-listen-failed', `cannot listen on ${listenPath}: ${err.message}`,
        'Check that the runtime directory is writable.', { cause: err }));
    server.once('error', onError);
    server.listen(listenPath, () => {
      server.off('error', onError);
      resolve();
    });
  });
  const tunnel = new SshTunnel(listenPath, server, conn, destination);
  server.on('error', (err) => tunnel.emit('error', new FerryError('tunnel-listen-failed',
    `tunnel listener ${listenPath} failed: ${err.message}`, 'Restart the coordinator.', { cause: err })));
  try {
    await chmod(listenPath, 0o600);
  } catch (err) {
    await tunnel.close();
    throw err;
  }
  return tunnel;
}
