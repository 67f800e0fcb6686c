/**
 * A throwaway sshd on 127.0.0.1 with its own host key, trusting a throwaway user key, and the
 * ssh_config and known_hosts a client needs to reach it with host key checking on. The demo and
 * the benchmarks reach their local workers through it, as a user reaches real remotes.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { userInfo } from 'node:os';
import { join } from 'node:path';

export const SSHD = '/usr/sbin/sshd';

export interface LoopbackSshd {
  port: number;
  /** An ssh_config whose `Host <pattern>` block reaches this sshd (FERRY_SSH_CONFIG). */
  sshConfig: string;
  pid: number;
  exited: Promise<void>;
  stop(): Promise<void>;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** Waits (bounded) until something accepts connections on 127.0.0.1:port. */
export async function waitForPort(port: number, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what} did not listen on 127.0.0.1:${port} within ${timeoutMs} ms`);
}

export async function startLoopbackSshd(dir: string, hostPattern: string): Promise<LoopbackSshd> {
  mkdirSync(dir, { recursive: true });
  const keygen = (file: string) => execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', file]);
  keygen(join(dir, 'host_key'));
  keygen(join(dir, 'user_key'));
  writeFileSync(join(dir, 'authorized_keys'), readFileSync(join(dir, 'user_key.pub')));
  const port = await freePort();
  writeFileSync(
    join(dir, 'sshd_config'),
    [
      `ListenAddress 127.0.0.1:${port}`,
      `HostKey ${join(dir, 'host_key')}`,
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      `PidFile ${join(dir, 'sshd.pid')}`,
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'PermitRootLogin prohibit-password',
      'UsePAM no',
      'StrictModes no',
      'AllowTcpForwarding yes',
      'LogLevel ERROR',
      '',
    ].join('\n'),
  );
  // sshd's privilege separation directory; a packaged sshd gets it from systemd.
  if (process.getuid?.() === 0) mkdirSync('/run/sshd', { recursive: true });
  const sshd = spawn(SSHD, ['-D', '-e', '-f', join(dir, 'sshd_config')], { stdio: ['ignore', 'ignore', 'ignore'] });
  const exited = new Promise<void>((resolve) => sshd.once('exit', () => resolve()));
  const stop = () =>
    new Promise<void>((resolve) => {
      if (sshd.exitCode !== null || sshd.signalCode !== null) return resolve();
      sshd.once('exit', () => resolve());
      sshd.kill('SIGTERM');
    });
  try {
    await waitForPort(port, 'sshd');
  } catch (err) {
    await stop();
    throw err;
  }
  writeFileSync(join(dir, 'known_hosts'), `[127.0.0.1]:${port} ${readFileSync(join(dir, 'host_key.pub'), 'utf8').trim()}\n`);
  const sshConfig = join(dir, 'ssh_config');
  writeFileSync(
    sshConfig,
    `Host ${hostPattern}\n  HostName 127.0.0.1\n  Port ${port}\n  User ${userInfo().username}\n  IdentityFile ${join(dir, 'user_key')}\n` +
      `  IdentitiesOnly yes\n  UserKnownHostsFile ${join(dir, 'known_hosts')}\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  BatchMode yes\n`,
  );
  return { port, sshConfig, pid: sshd.pid!, exited, stop };
}
