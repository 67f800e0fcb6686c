import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkHostKey, parseKnownHosts } from '../../coordinator/known-hosts';
import { resolveSshTarget, type SshTarget } from '../../coordinator/ssh-config';
import { connectSsh, type ConnectOptions } from '../../coordinator/ssh-connection';
import { openTunnel, type Tunnel } from '../../coordinator/tunnel';
import { FerryError } from '../../proto/errors';
import { clusterSupport, startCluster, type Cluster, type Remote } from '../support/cluster';

const support = clusterSupport();

/** A node echo server (NODELAY, as a worker would be); prints its address once listening. */
const echoScript = (listen: string): string =>
  `const net=require('net');const s=net.createServer(c=>{c.setNoDelay?.(true);c.on('error',()=>c.destroy());c.pipe(c)});` +
  `s.listen(${listen},()=>console.log('listening '+JSON.stringify(s.address())));` +
  `process.on('SIGTERM',()=>process.exit(0));`;

/**
 * Answers each 200-byte request in two writes a tick apart, as an HTTP/2 server sends headers then data: sshd then
 * sends two packets, and the second waits for a delayed ACK unless sshd has TCP_NODELAY (set by the session channel).
 */
const splitReplyScript =
  `const net=require('net');const s=net.createServer(c=>{c.setNoDelay(true);let b=Buffer.alloc(0);` +
  `c.on('data',d=>{b=Buffer.concat([b,d]);while(b.length>=200){const m=b.subarray(0,200);b=b.subarray(200);` +
  `c.write(m.subarray(0,100));setImmediate(()=>c.write(m.subarray(100)))}})});` +
  `s.listen({host:'127.0.0.1',port:0},()=>console.log('listening '+JSON.stringify(s.address())));`;

/** Sends `data`, half-closes, and collects everything until the other side ends. */
function exchange(path: string, data: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const sock = connect(path);
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('end', () => resolve(Buffer.concat(chunks)));
    sock.on('error', reject);
    sock.on('connect', () => sock.end(data));
  });
}

/** Resolves with the error code of a TCP connect (or 'connected'). */
function tcpProbe(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const sock = connect({ host, port });
    sock.setTimeout(2000, () => {
      sock.destroy();
      resolve('timeout');
    });
    sock.on('connect', () => {
      sock.destroy();
      resolve('connected');
    });
    sock.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

function readExactly(sock: Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const onData = (c: Buffer): void => {
      chunks.push(c);
      got += c.length;
      if (got >= n) {
        sock.off('data', onData);
        sock.off('error', reject);
        resolve(Buffer.concat(chunks));
      }
    };
    sock.on('data', onData);
    sock.on('error', reject);
  });
}

async function expectFerryError(p: Promise<unknown>, code: string): Promise<FerryError> {
  const err = await p.then(
    () => {
      throw new Error(`expected a FerryError ${code}, but it succeeded`);
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(FerryError);
  expect(err).toMatchObject({ code });
  return err as FerryError;
}

describe.skipIf(!support.ok)('ssh connections and tunnels against namespaced sshd', () => {
  let cluster: Cluster;
  let r1: Remote;
  let r2: Remote;
  let base: SshTarget;
  let scratch: string;
  const open: Client[] = [];
  const tunnels: Tunnel[] = [];

  async function connectTracked(target: SshTarget, options: ConnectOptions = {}): Promise<Client> {
    const conn = await connectSsh(target, options);
    conn.on('error', (err) => console.error(`ssh connection error: ${err.message}`));
    open.push(conn);
    return conn;
  }

  async function tunnelTo(conn: Client, dest: Parameters<typeof openTunnel>[1], name: string): Promise<Tunnel> {
    const t = await openTunnel(conn, dest, join(scratch, name));
    t.on('error', () => undefined); // individual tests listen when they expect failures
    tunnels.push(t);
    return t;
  }

  beforeAll(async () => {
    cluster = await startCluster({ remotes: 2, worker: false });
    r1 = cluster.remote('r1');
    r2 = cluster.remote('r2');
    base = await resolveSshTarget('r1', { ...process.env, ...cluster.env() });
    scratch = mkdtempSync(join(tmpdir(), 'ferry-ssh-test-'));
  });

  afterAll(async () => {
    for (const t of tunnels) await t.close();
    for (const c of open) c.end();
    await cluster?.stop();
    await cluster?.stop(); // a second stop is a no-op
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it('resolves the cluster alias through FERRY_SSH_CONFIG', () => {
    expect(base).toMatchObject({
      alias: 'r1',
      hostname: r1.address,
      port: 22,
      user: 'root',
      identityFiles: [cluster.userKeyPath],
      identitiesOnly: true,
      userKnownHostsFiles: [cluster.knownHostsPath],
      globalKnownHostsFiles: ['/dev/null'],
      strictHostKeyChecking: 'yes',
    });
  });

  it('connects with the user key and runs a command', async () => {
    const conn = await connectTracked(base);
    const out = await new Promise<string>((resolve, reject) => {
      conn.exec('echo hi-from-$(hostname)', (err, stream) => {
        if (err) return reject(err);
        let text = '';
        stream.on('data', (c: Buffer) => (text += c.toString()));
        stream.on('close', () => resolve(text));
        stream.stderr.resume();
      });
    });
    expect(out).toMatch(/^hi-from-/);
  });

  it('refuses an unknown host key (empty known_hosts)', async () => {
    const kh = join(scratch, 'empty_known_hosts');
    writeFileSync(kh, '');
    const err = await expectFerryError(connectSsh({ ...base, userKnownHostsFiles: [kh] }), 'host-key-unknown');
    expect(err.message).toContain('r1');
    expect(err.message).toMatch(/SHA256:/);
    expect(err.hint).toContain(`ssh-keyscan -p 22 ${r1.address}`);
    expect(readFileSync(kh, 'utf8')).toBe('');
  });

  it('refuses a changed host key', async () => {
    const kh = join(scratch, 'changed_known_hosts');
    const other = join(scratch, 'other_host_key');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other]);
    const otherPub = readFileSync(`${other}.pub`, 'utf8').trim().split(/\s+/).slice(0, 2).join(' ');
    writeFileSync(kh, `${r1.address} ${otherPub}\n`);
    const err = await expectFerryError(connectSsh({ ...base, userKnownHostsFiles: [kh] }), 'host-key-changed');
    expect(err.message).toContain('r1');
    expect(err.message).toContain(`${kh}:1`);
    expect(err.hint).toContain('ssh-keygen');
    // accept-new and no do not override a change either
    await expectFerryError(connectSsh({ ...base, userKnownHostsFiles: [kh], strictHostKeyChecking: 'no' }), 'host-key-changed');
  });

  it('refuses a revoked host key', async () => {
    const kh = join(scratch, 'revoked_known_hosts');
    writeFileSync(kh, `${r1.address} ${r1.hostPublicKey}\n@revoked * ${r1.hostPublicKey}\n`);
    const err = await expectFerryError(connectSsh({ ...base, userKnownHostsFiles: [kh] }), 'host-key-revoked');
    expect(err.message).toContain('r1');
  });

  it('accepts a known_hosts hashed by ssh-keygen -H', async () => {
    const kh = join(scratch, 'hashed_known_hosts');
    copyFileSync(cluster.knownHostsPath, kh);
    execFileSync('ssh-keygen', ['-H', '-f', kh], { stdio: 'ignore' });
    expect(readFileSync(kh, 'utf8')).not.toContain(r1.address);
    await connectTracked({ ...base, userKnownHostsFiles: [kh] });
  });

  it('accept-new records the key, which then satisfies StrictHostKeyChecking yes', async () => {
    const kh = join(scratch, 'sub', 'accept_new_known_hosts'); // the directory does not exist yet
    await connectTracked({ ...base, userKnownHostsFiles: [kh], strictHostKeyChecking: 'accept-new' });
    const text = readFileSync(kh, 'utf8');
    expect(text.trim().split('\n')).toHaveLength(1);
    const blob = Buffer.from(r1.hostPublicKey.split(' ')[1], 'base64');
    expect(checkHostKey(parseKnownHosts(text, kh), r1.address, 22, 'ssh-ed25519', blob).status).toBe('match');
    // OpenSSH reads what we wrote
    expect(execFileSync('ssh-keygen', ['-F', r1.address, '-f', kh], { encoding: 'utf8' })).toContain('found');
    await connectTracked({ ...base, userKnownHostsFiles: [kh], strictHostKeyChecking: 'yes' });
    expect(readFileSync(kh, 'utf8')).toBe(text);
  });

  it('fails authentication with a wrong key and names what it tried', async () => {
    const wrong = join(scratch, 'wrong_key');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', wrong]);
    const locked = join(scratch, 'locked_key');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', 'secret', '-f', locked]);
    const err = await expectFerryError(
      connectSsh({ ...base, identityFiles: [join(scratch, 'absent_key'), locked, wrong] }),
      'ssh-auth-failed',
    );
    expect(err.message).toContain('r1');
    expect(err.message).toContain(wrong);
    expect(err.message).toContain(`${locked} (needs a passphrase)`);
    expect(err.hint).toMatch(/ssh-add/);
  });

  describe.skipIf(!existsSync('/usr/bin/ssh-agent'))('with an ssh-agent', () => {
    let agent: ChildProcess | undefined;
    let agentSock: string;
    beforeAll(async () => {
      agentSock = join(scratch, 'agent.sock');
      agent = spawn('ssh-agent', ['-D', '-a', agentSock], { stdio: 'ignore' });
      for (let i = 0; i < 100 && !existsSync(agentSock); i++) await new Promise((r) => setTimeout(r, 20));
      execFileSync('ssh-add', [cluster.userKeyPath], { env: { ...process.env, SSH_AUTH_SOCK: agentSock }, stdio: 'ignore' });
    });
    afterAll(() => {
      agent?.kill('SIGTERM');
    });

    it('authenticates with an agent key matching an IdentityFile .pub (private key absent)', async () => {
      const pubOnly = join(scratch, 'pub_only');
      copyFileSync(`${cluster.userKeyPath}.pub`, `${pubOnly}.pub`);
      await connectTracked({ ...base, identityFiles: [pubOnly] }, { agentSocket: agentSock });
    });

    it('with IdentitiesOnly, does not offer agent keys that match no IdentityFile', async () => {
      const wrong = join(scratch, 'wrong_key2');
      execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', wrong]);
      const err = await expectFerryError(
        connectSsh({ ...base, identityFiles: [wrong] }, { agentSocket: agentSock }),
        'ssh-auth-failed',
      );
      expect(err.message).not.toContain('agent:');
      // without IdentitiesOnly the agent key is offered and works
      await connectTracked({ ...base, identityFiles: [wrong], identitiesOnly: false }, { agentSocket: agentSock });
    });
  });

  it('fails promptly with ssh-connect-failed when sshd is not running', async () => {
    await r2.stopSshd();
    const target = await resolveSshTarget('r2', { ...process.env, ...cluster.env() });
    const started = Date.now();
    const err = await expectFerryError(connectSsh(target), 'ssh-connect-failed');
    expect(Date.now() - started).toBeLessThan(3000);
    expect(err.message).toContain('r2');
    expect(err.hint).toMatch(/sshd/);
  });

  describe('tunnels', () => {
    let conn: Client;
    let echoPort: number;
    let splitPort: number;
    let unixEcho: string;

    beforeAll(async () => {
      conn = await connectTracked(base);
      const tcp = await r1.spawn([process.execPath, '-e', echoScript(`{host:'127.0.0.1',port:0}`)], {
        readyPattern: /listening/,
      });
      echoPort = JSON.parse(/listening (.*)/.exec(tcp.output())![1]).port;
      unixEcho = join(r1.dir, 'echo.sock');
      await r1.spawn([process.execPath, '-e', echoScript(JSON.stringify(unixEcho))], { readyPattern: /listening/ });
      const split = await r1.spawn([process.execPath, '-e', splitReplyScript], { readyPattern: /listening/ });
      splitPort = JSON.parse(/listening (.*)/.exec(split.output())![1]).port;
    });

    it('round-trips data to a loopback-only TCP server in the namespace, including 5 MB', async () => {
      const t = await tunnelTo(conn, { kind: 'tcp', host: '127.0.0.1', port: echoPort }, 'tcp.sock');
      expect((await exchange(t.path, Buffer.from('hello'))).toString()).toBe('hello');
      const big = randomBytes(5 * 1024 * 1024);
      const back = await exchange(t.path, big);
      expect(back.length).toBe(big.length);
      expect(createHash('sha256').update(back).digest('hex')).toBe(createHash('sha256').update(big).digest('hex'));
      // Several connections at once share the SSH connection.
      const many = await Promise.all([1, 2, 3, 4].map((i) => exchange(t.path, Buffer.from(`c${i}`))));
      expect(many.map(String)).toEqual(['c1', 'c2', 'c3', 'c4']);
    });

    it('the echo port is not reachable from outside the namespace', async () => {
      expect(await tcpProbe(r1.address, echoPort)).toBe('ECONNREFUSED');
      expect(await tcpProbe('127.0.0.1', echoPort)).toBe('ECONNREFUSED');
    });

    it('round-trips through streamlocal to a Unix socket in the namespace', async () => {
      const t = await tunnelTo(conn, { kind: 'unix', path: unixEcho }, 'unix.sock');
      expect((await exchange(t.path, Buffer.from('over streamlocal'))).toString()).toBe('over streamlocal');
    });

    it('makes the local socket 0600, and close() removes it', async () => {
      const t = await openTunnel(conn, { kind: 'tcp', host: '127.0.0.1', port: echoPort }, join(scratch, 'closing.sock'));
      const { statSync } = await import('node:fs');
      expect(statSync(t.path).mode & 0o777).toBe(0o600);
      // a live connection does not keep close() waiting
      const sock = connect(t.path);
      await new Promise((r) => sock.once('connect', r));
      const closed = new Promise((r) => sock.once('close', r));
      await t.close();
      await closed;
      expect(existsSync(t.path)).toBe(false);
      await t.close(); // twice is fine
    });

    it('replaces a stale socket file', async () => {
      const path = join(scratch, 'stale.sock');
      writeFileSync(path, 'left over');
      const t = await tunnelTo(conn, { kind: 'tcp', host: '127.0.0.1', port: echoPort }, 'stale.sock');
      expect((await exchange(t.path, Buffer.from('x'))).toString()).toBe('x');
    });

    it('closes the local connection and reports an error when the channel cannot be opened', async () => {
      const t = await tunnelTo(conn, { kind: 'tcp', host: '127.0.0.1', port: 1 }, 'nowhere.sock');
      const reported = new Promise<FerryError>((r) => t.on('error', r));
      const sock = connect(t.path);
      sock.on('error', () => undefined);
      await new Promise((r) => sock.once('close', r));
      const err = await reported;
      expect(err.code).toBe('tunnel-open-failed');
      expect(err.message).toContain('127.0.0.1:1');
    });

    it('completes 20 small request/response round trips (session channel opened, Nagle off)', async () => {
      const t = await tunnelTo(conn, { kind: 'tcp', host: '127.0.0.1', port: splitPort }, 'rtt.sock');
      const sock = connect(t.path);
      await new Promise((r) => sock.once('connect', r));
      const times: number[] = [];
      for (let i = 0; i < 20; i++) {
        const msg = Buffer.alloc(200, i);
        const started = process.hrtime.bigint();
        const reply = readExactly(sock, msg.length);
        sock.write(msg);
        expect((await reply).equals(msg)).toBe(true);
        times.push(Number(process.hrtime.bigint() - started) / 1e6);
      }
      sock.destroy();
      times.sort((a, b) => a - b);
      console.log(`tunnel round trip over ssh2: median ${times[10].toFixed(3)} ms (min ${times[0].toFixed(3)}, max ${times[19].toFixed(3)})`);
    });
  });
});
