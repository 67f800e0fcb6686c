/**
 * The worker's listen address. It must be a loopback address or a Unix socket: the worker has no
 * authentication of its own and is reached through SSH port forwarding (distcc's
 * `--allow 127.0.0.1 --listen 127.0.0.1`, but enforced rather than configured).
 */
import { isIPv4, isIPv6 } from 'node:net';
import { FerryError } from '../proto/errors';

export type ListenAddress =
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'unix'; path: string };

export const DEFAULT_PORT = 3633;

function isLoopback(host: string): boolean {
  if (isIPv4(host)) return host.startsWith('127.');
  if (isIPv6(host)) return host === '::1' || host === '0:0:0:0:0:0:0:1';
  return false;
}

function refuseNonLoopback(spec: string): FerryError {
  return new FerryError(
    'listen-not-loopback',
    `ferry-worker refuses to listen on ${spec}: it only listens on a loopback address or a Unix socket`,
    'The worker has no authentication of its own; clients reach it through SSH port forwarding. ' +
      `Use --listen 127.0.0.1:${DEFAULT_PORT} or --listen unix:/run/ferry/worker.sock and list the host in FERRY_HOSTS on the initiator.`,
  );
}

/** Parses `127.0.0.1:3633`, `[::1]:3633`, `localhost:3633`, `:3633`, `3633` or `unix:/path`. */
export function parseListenAddress(spec: string): ListenAddress {
  const text = spec.trim();
  if (text.startsWith('unix:')) {
    const path = text.slice('unix:'.length);
    if (!path.startsWith('/')) {
      throw new FerryError('listen-invalid', `Unix socket path must be absolute: ${spec}`, 'Use --listen unix:/run/ferry/worker.sock');
    }
    return { kind: 'unix', path };
  }
  let host: string;
  let portText: string;
  const bracketed = /^\[([^\]]+)\]:(\d+)$/.exec(text);
  if (bracketed) {
    [, host, portText] = bracketed;
  } else if (/^\d+$/.test(text)) {
    host = '127.0.0.1';
    portText = text;
  } else {
    const colon = text.lastIndexOf(':');
    if (colon < 0) throw new FerryError('listen-invalid', `listen address has no port: ${spec}`, `Use --listen 127.0.0.1:${DEFAULT_PORT}`);
    host = text.slice(0, colon) || '127.0.0.1';
    portText = text.slice(colon + 1);
    if (host.includes(':')) throw new FerryError('listen-invalid', `IPv6 addresses need brackets: ${spec}`, 'Use --listen [::1]:3633');
  }
  if (host === 'localhost') host = '127.0.0.1';
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new FerryError('listen-invalid', `listen port must be 1-65535: ${spec}`, `Use --listen 127.0.0.1:${DEFAULT_PORT}`);
  }
  if (!isLoopback(host)) throw refuseNonLoopback(spec);
  return { kind: 'tcp', host, port };
}

/** The gRPC server binding string for an address. */
export function grpcBindTarget(address: ListenAddress): string {
  if (address.kind === 'unix') return `unix:${address.path}`;
  return isIPv6(address.host) ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/** A gRPC peer string ("unix:…", "127.0.0.1:5000", "ipv6:[::1]:5000") is one we serve. */
export function isLocalPeer(peer: string): boolean {
  if (peer.startsWith('unix:')) return true;
  const stripped = peer.replace(/^ipv4:/, '').replace(/^ipv6:/, '');
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(stripped);
  const host = bracketed ? bracketed[1] : stripped.replace(/:\d+$/, '');
  return isLoopback(host) || host === '::ffff:127.0.0.1';
}
