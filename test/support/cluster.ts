/**
 * Simulated remote hosts for integration tests: each remote is a network namespace behind a veth pair, running its own
 * sshd (and optionally a worker) so tunnels, host keys and loopback isolation are exercised for real.
 *
 * Parallel test files each get their own names (`ferry-<pid>-<n>-r<i>`) and /30 subnets of 10.213.0.0/16, claimed
 * with lock files so two processes never pick the same one. Leftovers of dead test processes are removed on start.
 */
import { spawn, execFile, execFileSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const SSHD = '/usr/sbin/sshd';
const SUBNET_PREFIX = '10.213';
/** /30 slots in 10.213.0.0/16. */
const SLOT_COUNT = 16384;
const SLOT_LOCK_DIR = join(tmpdir(), 'ferry-cluster-slots');
const SSHD_READY_TIMEOUT_MS = 10_000;
const DEFAULT_WORKER_READY_MS = 15_000;
const STOP_GRACE_MS = 3000;
const CMD_TIMEOUT_MS = 10_000;

export interface WorkerSpec {
  command: (remote: Remote) => string[];
  readyPattern: RegExp;
  readyTimeoutMs?: number;
}

export interface ClusterOptions {
  remotes: number;
  worker?: WorkerSpec | false;
}

export interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface Spawned {
  readonly pid: number;
  /** stdout and stderr so far (capped). */
  output(): string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Signal, wait (bounded), then SIGKILL. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

export interface Remote {
  /** The ssh alias in the cluster's ssh_config: r1, r2, … */
  readonly name: string;
  readonly namespace: string;
  /** The remote's address (inside the namespace); sshd listens on its port 22. */
  readonly address: string;
  /** The test machine's end of the veth pair. */
  readonly hostAddress: string;
  /** `ssh-ed25519 AAAA…` of this sshd. */
  readonly hostPublicKey: string;
  readonly dir: string;
  /** Runs a command inside the namespace to completion (bounded). */
  exec(cmd: string[], options?: { timeoutMs?: number }): Promise<ExecResult>;
  /** Starts a long-running command inside the namespace; stopped by cluster.stop() if still running. */
  spawn(cmd: string[], options?: { readyPattern?: RegExp; readyTimeoutMs?: number }): Promise<Spawned>;
  startWorker(args?: string[]): Promise<Spawned>;
  stopWorker(signal?: NodeJS.Signals): Promise<void>;
  stopSshd(): Promise<void>;
  startSshd(): Promise<void>;
}

export interface Cluster {
  readonly dir: string;
  readonly sshConfigPath: string;
  readonly knownHostsPath: string;
  /** Private key authorised on every remote (public key at `${userKeyPath}.pub`). */
  readonly userKeyPath: string;
  readonly remotes: Remote[];
  remote(name: string): Remote;
  env(): { FERRY_SSH_CONFIG: string };
  stop(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------------------------
// Support check

let support: { ok: boolean; why?: string } | undefined;

/**
 * Whether this machine can run clusters. Tests use `describe.skipIf(!clusterSupport().ok)`; under CI an unsupported
 * machine throws instead, so the run fails rather than silently skipping the network tests.
 */
export function clusterSupport(): { ok: boolean; why?: string } {
  support ??= probeSupport();
  if (!support.ok && process.env.CI) {
    throw new Error(`cluster tests cannot run on this CI machine: ${support.why}`);
  }
  return support;
}

function probeSupport(): { ok: boolean; why?: string } {
  if (process.platform !== 'linux') return { ok: false, why: 'not Linux' };
  if (!process.getuid || process.getuid() !== 0) return { ok: false, why: 'not root (ip netns needs it)' };
  if (!existsSync(SSHD)) return { ok: false, why: `${SSHD} is missing (apt-get install openssh-server)` };
  for (const tool of ['ip', 'ssh-keygen']) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore', timeout: CMD_TIMEOUT_MS });
    } catch {
      return { ok: false, why: `${tool} is missing` };
    }
  }
  // Listing is not enough: containers often may list but not create namespaces.
  const probe = `ferry-probe-${process.pid}`;
  try {
    ip(['netns', 'add', probe]);
    ip(['netns', 'del', probe]);
  } catch (err) {
    return { ok: false, why: `cannot create a network namespace: ${(err as Error).message.split('\n')[0]}` };
  }
  return { ok: true };
}

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

function ip(args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', timeout: CMD_TIMEOUT_MS, stdio: ['ignore', 'pipe', 'pipe'] });
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function namespacePids(ns: string): number[] {
  return ip(['netns', 'pids', ns])
    .split('\n')
    .map((l) => Number(l.trim()))
    .filter((n) => Number.isInteger(n) && n > 0);
}

function listNamespaces(): string[] {
  return ip(['netns', 'list'])
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0])
    .filter(Boolean);
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err; // already gone is the goal
  }
}

/** Kills everything inside a namespace (only processes this harness started live there), bounded, then deletes it. */
async function destroyNamespace(ns: string): Promise<void> {
  if (!listNamespaces().includes(ns)) return;
  for (let round = 0; round < 20; round++) {
    const pids = namespacePids(ns);
    if (pids.length === 0) break;
    for (const pid of pids) killQuietly(pid, round < 5 ? 'SIGTERM' : 'SIGKILL');
    await sleep(100);
  }
  try {
    ip(['netns', 'del', ns]);
  } catch (err) {
    // Another test process cleaning the same leftovers may have won the race; only a namespace still there is a failure.
    if (listNamespaces().includes(ns)) throw err;
  }
}

/** A process's name, or undefined once it has gone. */
function commOf(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** A lock file's owner pid, or undefined if another process removed the file meanwhile. */
function lockOwner(lock: string): number | undefined {
  try {
    return Number(readFileSync(lock, 'utf8')) || 0;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

function linkExists(name: string): boolean {
  return ip(['-o', 'link', 'show']).split('\n').some((l) => l.split(':')[1]?.trim().split('@')[0] === name);
}

// ---------------------------------------------------------------------------------------------------------------
// Names and addresses

/** Namespace names; the pid lets a later run find leftovers of a dead process. */
export function namespaceName(pid: number, cluster: number, remote: number): string {
  return `ferry-${pid}-${cluster}-r${remote}`;
}

/** Host-side veth names: IFNAMSIZ allows 15 characters, so pid and counter are written in base 36. */
export function vethName(pid: number, cluster: number, remote: number): string {
  const name = `fy-${pid.toString(36)}-${cluster.toString(36)}-${remote}`;
  if (name.length > 15) throw new Error(`veth name too long: ${name}`);
  return name;
}

export function slotAddresses(slot: number): { host: string; remote: string; prefix: string } {
  const base = slot * 4;
  const third = base >> 8;
  const fourth = base & 255;
  return {
    host: `${SUBNET_PREFIX}.${third}.${fourth + 1}`,
    remote: `${SUBNET_PREFIX}.${third}.${fourth + 2}`,
    prefix: `${SUBNET_PREFIX}.${third}.${fourth}/30`,
  };
}

function slotOf(address: string): number | undefined {
  const m = /^10\.213\.(\d+)\.(\d+)$/.exec(address);
  return m ? ((Number(m[1]) << 8) + Number(m[2])) >> 2 : undefined;
}

function slotsInUseOnMachine(): Set<number> {
  const used = new Set<number>();
  for (const m of ip(['-o', '-4', 'addr']).matchAll(/inet (\d+\.\d+\.\d+\.\d+)\//g)) {
    const s = slotOf(m[1]);
    if (s !== undefined) used.add(s);
  }
  return used;
}

/** Claims a free /30 with an O_EXCL lock file holding our pid; stale locks of dead pids are taken over. */
function claimSlot(seed: number): number {
  mkdirSync(SLOT_LOCK_DIR, { recursive: true });
  const used = slotsInUseOnMachine();
  for (let i = 0; i < SLOT_COUNT; i++) {
    const slot = (seed + i) % SLOT_COUNT;
    if (used.has(slot)) continue;
    const lock = join(SLOT_LOCK_DIR, String(slot));
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = openSync(lock, 'wx');
        writeSync(fd, String(process.pid));
        closeSync(fd);
        return slot;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const owner = lockOwner(lock);
        if (owner === undefined) continue; // released meanwhile: try again
        if (owner === 0 || pidAlive(owner)) break; // 0: its owner is still writing its pid
        rmSync(lock, { force: true }); // a dead process's claim
      }
    }
  }
  throw new Error('no free /30 left in 10.213.0.0/16');
}

function releaseSlot(slot: number): void {
  rmSync(join(SLOT_LOCK_DIR, String(slot)), { force: true });
}

/** Removes what dead test processes left behind: their namespaces (and processes inside), temp dirs, slot locks. */
async function removeLeftovers(): Promise<void> {
  for (const ns of listNamespaces()) {
    const m = /^ferry-(\d+)-\d+-r\d+$/.exec(ns);
    if (m && !pidAlive(Number(m[1]))) await destroyNamespace(ns);
  }
  for (const entry of readdirSync(tmpdir())) {
    const m = /^ferry-cluster-(\d+)-/.exec(entry);
    if (m && !pidAlive(Number(m[1]))) rmSync(join(tmpdir(), entry), { recursive: true, force: true });
  }
  if (existsSync(SLOT_LOCK_DIR)) {
    for (const entry of readdirSync(SLOT_LOCK_DIR)) {
      const lock = join(SLOT_LOCK_DIR, entry);
      const owner = lockOwner(lock);
      if (owner && !pidAlive(owner)) rmSync(lock, { force: true });
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Processes

const OUTPUT_CAP = 1 << 20;

function track(child: ChildProcess, what: string, readyPattern?: RegExp, readyTimeoutMs = DEFAULT_WORKER_READY_MS): Promise<Spawned> {
  let out = '';
  let stdoutText = '';
  const append = (chunk: Buffer, isStdout: boolean): void => {
    const text = chunk.toString('utf8');
    if (out.length < OUTPUT_CAP) out += text;
    if (isStdout && stdoutText.length < OUTPUT_CAP) stdoutText += text;
  };
  child.stdout?.on('data', (c: Buffer) => append(c, true));
  child.stderr?.on('data', (c: Buffer) => append(c, false));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }));
    child.on('error', () => resolve({ code: null, signal: null }));
  });
  let hasExited = false;
  void exited.then(() => (hasExited = true));
  const handle: Spawned = {
    pid: child.pid ?? -1,
    output: () => out,
    exited,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (hasExited || child.pid === undefined) return;
      killQuietly(child.pid, signal);
      const timer = sleep(STOP_GRACE_MS).then(() => 'timeout' as const);
      if ((await Promise.race([exited, timer])) === 'timeout') {
        killQuietly(child.pid, 'SIGKILL');
        await exited;
      }
    },
  };
  return new Promise((resolve, reject) => {
    child.on('error', (err) => reject(new Error(`${what}: cannot start: ${err.message}`)));
    if (!readyPattern) {
      child.on('spawn', () => resolve(handle));
      return;
    }
    const timer = setTimeout(() => {
      void handle.stop('SIGKILL');
      reject(new Error(`${what}: not ready within ${readyTimeoutMs} ms (waiting for ${readyPattern}); output:\n${out}`));
    }, readyTimeoutMs);
    const check = (): void => {
      if (readyPattern.test(stdoutText)) {
        clearTimeout(timer);
        child.stdout?.off('data', check);
        resolve(handle);
      }
    };
    child.stdout?.on('data', check);
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`${what}: exited (code ${code}, signal ${signal}) before it was ready; output:\n${out}`));
    });
  });
}

function waitForTcp(host: string, port: number, timeoutMs: number, stillRunning: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const attempt = (): Promise<boolean> =>
    new Promise((resolve) => {
      const sock = connect({ host, port });
      const done = (ok: boolean): void => {
        sock.destroy();
        resolve(ok);
      };
      sock.setTimeout(500, () => done(false));
      sock.once('connect', () => done(true));
      sock.once('error', () => done(false)); // not listening yet: that is what we are polling for
    });
  return (async () => {
    while (Date.now() < deadline) {
      if (!stillRunning()) throw new Error(`sshd on ${host} exited during start-up`);
      if (await attempt()) return;
      await sleep(50);
    }
    throw new Error(`sshd on ${host}:${port} did not accept connections within ${timeoutMs} ms`);
  })();
}

// ---------------------------------------------------------------------------------------------------------------
// The cluster

let clusterCounter = 0;

function sshdConfig(r: { dir: string; address: string }, authorizedKeys: string): string {
  return [
    'Port 22',
    `ListenAddress ${r.address}`,
    `HostKey ${join(r.dir, 'ssh_host_ed25519_key')}`,
    `PidFile ${join(r.dir, 'sshd.pid')}`,
    'PermitRootLogin prohibit-password',
    'PubkeyAuthentication yes',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    `AuthorizedKeysFile ${authorizedKeys}`,
    'UsePAM no',
    'StrictModes no',
    'UseDNS no',
    'AllowTcpForwarding yes',
    'AllowStreamLocalForwarding yes',
    'X11Forwarding no',
    'PrintMotd no',
    'LogLevel VERBOSE',
    '',
  ].join('\n');
}

function keygen(path: string, comment: string): void {
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', path], {
    stdio: 'ignore',
    timeout: CMD_TIMEOUT_MS,
  });
}

export async function startCluster(options: ClusterOptions): Promise<Cluster> {
  const supported = clusterSupport();
  if (!supported.ok) throw new Error(`cannot start a cluster: ${supported.why}`);
  if (!Number.isInteger(options.remotes) || options.remotes < 1 || options.remotes > 99) {
    throw new Error('startCluster: remotes must be 1..99');
  }
  await removeLeftovers();

  const pid = process.pid;
  const n = ++clusterCounter;
  const dir = mkdtempSync(join(tmpdir(), `ferry-cluster-${pid}-`));
  const userKeyPath = join(dir, 'id_ed25519');
  const authorizedKeys = join(dir, 'authorized_keys');
  const sshConfigPath = join(dir, 'ssh_config');
  const knownHostsPath = join(dir, 'known_hosts');

  const namespaces: string[] = [];
  const veths: string[] = [];
  const slots: number[] = [];
  const children = new Set<Spawned>();
  const remotes: Remote[] = [];
  let stopping: Promise<void> | undefined;

  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      const errors: unknown[] = [];
      const attempt = async (f: () => unknown): Promise<void> => {
        try {
          await f();
        } catch (err) {
          errors.push(err); // keep tearing down; reported together below
        }
      };
      for (const child of children) await attempt(() => child.stop('SIGTERM'));
      for (const ns of namespaces) await attempt(() => destroyNamespace(ns));
      for (const veth of veths) {
        await attempt(() => {
          try {
            if (linkExists(veth)) ip(['link', 'del', veth]);
          } catch (err) {
            // Deleting the namespace removes the pair too, a moment later: only a link still there is a failure.
            if (linkExists(veth)) throw err;
          }
        });
      }
      for (const slot of slots) await attempt(() => releaseSlot(slot));
      // Processes that just exited may still be removing their files (pid files, sockets): retry.
      await attempt(() => rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 }));
      if (errors.length) {
        const why = errors.map((e) => (e instanceof Error ? e.message : String(e))).join('; ');
        throw new AggregateError(errors, `cluster.stop() could not remove everything: ${why}`);
      }
    })());

  try {
    keygen(userKeyPath, 'ferry-cluster-user');
    writeFileSync(authorizedKeys, readFileSync(`${userKeyPath}.pub`));
    mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });

    const configBlocks: string[] = [];
    const knownHosts: string[] = [];
    for (let i = 1; i <= options.remotes; i++) {
      const name = `r${i}`;
      const ns = namespaceName(pid, n, i);
      const veth = vethName(pid, n, i);
      const slot = claimSlot((pid * 131 + n * 17 + i) % SLOT_COUNT);
      slots.push(slot);
      const addr = slotAddresses(slot);
      const rdir = join(dir, name);
      mkdirSync(rdir);

      ip(['netns', 'add', ns]);
      namespaces.push(ns);
      // The peer is created directly inside the namespace, so only the host side needs a unique name.
      ip(['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      veths.push(veth);
      ip(['addr', 'add', `${addr.host}/30`, 'dev', veth]);
      ip(['link', 'set', veth, 'up']);
      ip(['-n', ns, 'addr', 'add', `${addr.remote}/30`, 'dev', 'eth0']);
      ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
      ip(['-n', ns, 'link', 'set', 'lo', 'up']);

      keygen(join(rdir, 'ssh_host_ed25519_key'), name);
      const hostPublicKey = readFileSync(join(rdir, 'ssh_host_ed25519_key.pub'), 'utf8').trim().split(/\s+/).slice(0, 2).join(' ');
      const configPath = join(rdir, 'sshd_config');
      writeFileSync(configPath, sshdConfig({ dir: rdir, address: addr.remote }, authorizedKeys));
      configBlocks.push([
        `Host ${name}`,
        `  HostName ${addr.remote}`,
        '  Port 22',
        '  User root',
        `  IdentityFile ${userKeyPath}`,
        '  IdentitiesOnly yes',
        `  UserKnownHostsFile ${knownHostsPath}`,
        '  GlobalKnownHostsFile /dev/null',
        '  StrictHostKeyChecking yes',
        '  BatchMode yes',
        '',
      ].join('\n'));
      knownHosts.push(`${addr.remote} ${hostPublicKey}`);

      const inNs = (cmd: string[]): string[] => ['netns', 'exec', ns, ...cmd];
      let sshd: Spawned | undefined;
      let worker: Spawned | undefined;
      const remote: Remote = {
        name,
        namespace: ns,
        address: addr.remote,
        hostAddress: addr.host,
        hostPublicKey,
        dir: rdir,
        exec(cmd, opts = {}) {
          return new Promise((resolve, reject) => {
            execFile('ip', inNs(cmd), { encoding: 'utf8', timeout: opts.timeoutMs ?? CMD_TIMEOUT_MS, maxBuffer: OUTPUT_CAP },
              (err, stdout, stderr) => {
                if (!err) return resolve({ code: 0, signal: null, stdout, stderr });
                const e = err as { killed?: boolean; code?: number | string | null; signal?: NodeJS.Signals | null };
                if (e.killed || typeof e.code === 'string') {
                  reject(new Error(`${name}: ${cmd.join(' ')}: ${e.killed ? 'timed out' : err.message}`));
                  return;
                }
                resolve({ code: e.code ?? null, signal: e.signal ?? null, stdout, stderr });
              });
          });
        },
        async spawn(cmd, opts = {}) {
          const child = spawn('ip', inNs(cmd), { stdio: ['ignore', 'pipe', 'pipe'] });
          const handle = await track(child, `${name}: ${cmd[0]}`, opts.readyPattern, opts.readyTimeoutMs);
          children.add(handle);
          void handle.exited.then(() => children.delete(handle));
          return handle;
        },
        async startWorker(args = []) {
          if (!options.worker) throw new Error('this cluster was started without a worker');
          if (worker) throw new Error(`${name}: the worker already runs`);
          worker = await remote.spawn([...options.worker.command(remote), ...args], {
            readyPattern: options.worker.readyPattern,
            readyTimeoutMs: options.worker.readyTimeoutMs,
          });
          return worker;
        },
        async stopWorker(signal = 'SIGTERM') {
          const w = worker;
          worker = undefined;
          await w?.stop(signal);
        },
        async startSshd() {
          if (sshd) return;
          const started = await remote.spawn([SSHD, '-D', '-e', '-f', configPath]);
          let running = true;
          void started.exited.then(() => (running = false));
          try {
            await waitForTcp(addr.remote, 22, SSHD_READY_TIMEOUT_MS, () => running);
          } catch (err) {
            await started.stop('SIGKILL');
            throw new Error(`${name}: ${(err as Error).message}; sshd said:\n${started.output()}`);
          }
          sshd = started;
        },
        async stopSshd() {
          const s = sshd;
          sshd = undefined;
          await s?.stop('SIGTERM');
          // Per-connection sshd children outlive the listener; end them too so the host is really "down".
          for (const p of namespacePids(ns)) {
            if (worker && p === worker.pid) continue;
            if (commOf(p) === 'sshd') killQuietly(p, 'SIGTERM');
          }
        },
      };
      remotes.push(remote);
    }

    writeFileSync(sshConfigPath, configBlocks.join('\n'));
    writeFileSync(knownHostsPath, knownHosts.join('\n') + '\n');
    await Promise.all(remotes.map((r) => r.startSshd()));
  } catch (err) {
    await stop().catch((stopErr: unknown) => {
      throw new AggregateError([err, stopErr], `startCluster failed: ${(err as Error).message}`);
    });
    throw err;
  }

  return {
    dir,
    sshConfigPath,
    knownHostsPath,
    userKeyPath,
    remotes,
    remote(name) {
      const r = remotes.find((x) => x.name === name);
      if (!r) throw new Error(`no remote ${name} (have ${remotes.map((x) => x.name).join(', ')})`);
      return r;
    },
    env: () => ({ FERRY_SSH_CONFIG: sshConfigPath }),
    stop,
  };
}

