/**
 * One SSH connection per remote host, made with ssh2 but verified and authenticated the way OpenSSH would for the
 * same SshTarget: known_hosts under StrictHostKeyChecking, then ssh-agent keys, then IdentityFiles.
 */
import { appendFile, mkdir, readFile } from 'node:fs/promises';
import { Socket } from 'node:net';
import { dirname } from 'node:path';
import {
  BaseAgent,
  Client,
  OpenSSHAgent,
  utils,
  type AnyAuthMethod,
  type AuthenticationType,
  type ConnectConfig,
  type ParsedKey,
  type NextAuthHandler,
} from 'ssh2';
import { FerryError } from '../proto/errors';
import {
  checkHostKey,
  fingerprintSha256,
  formatKnownHostsLine,
  hostKeyAction,
  hostLookupName,
  keyTypeOfBlob,
  knownKeyTypes,
  newHashSalt,
  parseKnownHosts,
  preferredHostKeyAlgorithms,
  type KnownHostsEntry,
} from './known-hosts';
import type { SshTarget } from './ssh-config';
import { coalesceWrites } from './write-coalescing';

export interface ConnectOptions {
  /** SSH_AUTH_SOCK; without it the agent is not used. */
  agentSocket?: string;
  /** Handshake + authentication bound; default ConnectTimeout, else 20 s. */
  readyTimeoutMs?: number;
  /** Bound on the session channel opened after `ready`; default 10 s. */
  sessionTimeoutMs?: number;
  /** ssh2 keepalive; 0/absent disables it. */
  keepaliveIntervalMs?: number;
  /** Where to say that something costs more than it should (the coordinator's log). */
  log?: (line: string) => void;
}

const DEFAULT_READY_TIMEOUT_MS = 20_000;
const DEFAULT_SESSION_TIMEOUT_MS = 10_000;

function describeTarget(t: SshTarget): string {
  return `${t.alias} (${t.user}@${t.hostname}:${t.port})`;
}

/** The name and port known_hosts is searched under: HostKeyAlias replaces both, as in OpenSSH. */
export function knownHostsKey(t: SshTarget): { host: string; port: number } {
  return t.hostKeyAlias ? { host: t.hostKeyAlias, port: 22 } : { host: t.hostname, port: t.port };
}

function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

async function loadKnownHosts(t: SshTarget): Promise<KnownHostsEntry[]> {
  const entries: KnownHostsEntry[] = [];
  for (const file of [...t.userKnownHostsFiles, ...t.globalKnownHostsFiles]) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if (isMissing(err)) continue; // OpenSSH's defaults list files that usually do not exist (known_hosts2)
      throw new FerryError('known-hosts-unreadable', `${describeTarget(t)}: cannot read ${file}: ${(err as Error).message}`,
        `Fix the permissions of ${file} or point UserKnownHostsFile elsewhere.`, { cause: err });
    }
    entries.push(...parseKnownHosts(text, file));
  }
  return entries;
}

async function recordHostKey(t: SshTarget, key: Buffer): Promise<void> {
  const file = t.userKnownHostsFiles[0];
  if (!file) return;
  const { host, port } = knownHostsKey(t);
  const line = formatKnownHostsLine(host, port, key, t.hashKnownHosts ? newHashSalt() : undefined);
  let prefix = '';
  try {
    const existing = await readFile(file, 'utf8');
    if (existing.length > 0 && !existing.endsWith('\n')) prefix = '\n';
  } catch (err) {
    if (!isMissing(err)) throw err;
    await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  }
  await appendFile(file, `${prefix}${line}\n`, { mode: 0o600 });
}

interface Identity {
  path: string;
  key: ParsedKey;
}

interface Identities {
  usable: Identity[];
  /** Files that exist but cannot be used (passphrase, bad format), with why. */
  skipped: string[];
  /** Public keys of every IdentityFile (private or .pub), for IdentitiesOnly's agent filter. */
  publicBlobs: Buffer[];
}

async function readOptional(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path);
  } catch (err) {
    if (isMissing(err)) return undefined;
    throw err;
  }
}

async function loadIdentities(files: readonly string[]): Promise<Identities> {
  const out: Identities = { usable: [], skipped: [], publicBlobs: [] };
  for (const path of files) {
    const pub = await readOptional(`${path}.pub`);
    if (pub) {
      const parsed = utils.parseKey(pub);
      if (!(parsed instanceof Error)) out.publicBlobs.push(parsed.getPublicSSH());
    }
    let data: Buffer | undefined;
    try {
      data = await readOptional(path);
    } catch (err) {
      out.skipped.push(`${path} (${(err as Error).message})`);
      continue;
    }
    if (!data) continue;
    const parsed = utils.parseKey(data);
    if (parsed instanceof Error) {
      const why = /passphrase|encrypted/i.test(parsed.message) ? 'needs a passphrase' : parsed.message;
      out.skipped.push(`${path} (${why})`);
      continue;
    }
    const key = Array.isArray(parsed) ? (parsed[0] as ParsedKey) : parsed;
    if (!key.isPrivateKey()) {
      out.skipped.push(`${path} (not a private key)`);
      continue;
    }
    out.publicBlobs.push(key.getPublicSSH());
    out.usable.push({ path, key });
  }
  return out;
}

/** Wraps the user's agent to apply IdentitiesOnly and to record what was offered (for the error message). */
class ObservedAgent extends BaseAgent<ParsedKey> {
  readonly offered: ParsedKey[] = [];
  error?: Error;

  constructor(
    private readonly inner: OpenSSHAgent,
    private readonly allowed: readonly Buffer[] | undefined,
  ) {
    super();
  }

  getIdentities(cb: (err: Error | undefined, keys?: ParsedKey[]) => void): void {
    this.inner.getIdentities((err, keys) => {
      if (err || !keys) {
        this.error = err ?? new Error('the agent returned no key list');
        cb(this.error);
        return;
      }
      // OpenSSHAgent in client mode hands back parsed keys; the typings also allow server-side entries.
      const parsed = keys.filter((k): k is ParsedKey => typeof (k as ParsedKey).getPublicSSH === 'function');
      const kept = this.allowed
        ? parsed.filter((k) => this.allowed!.some((blob) => blob.equals(k.getPublicSSH())))
        : parsed;
      this.offered.push(...kept);
      cb(undefined, kept);
    });
  }

  // ssh2 calls sign(pubKey, data, options, cb); the overloads of the typings are collapsed here.
  sign(pubKey: ParsedKey, data: Buffer, options: any, cb?: any): void {
    this.inner.sign(pubKey, data, options, cb);
  }
}

function agentKeyName(k: ParsedKey): string {
  return `agent:${k.comment || fingerprintSha256(k.getPublicSSH())}`;
}

/** Error hints for socket-level failures, by errno. */
export function connectFailureHint(code: string | undefined, t: SshTarget): string {
  switch (code) {
    case 'ECONNREFUSED':
      return `Nothing accepts connections on ${t.hostname}:${t.port}: check that sshd runs there and listens on that port.`;
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `The name ${t.hostname} does not resolve: check HostName in the ssh configuration and DNS.`;
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EHOSTDOWN':
      return `${t.hostname} is not reachable from this machine: check the network route (and VPN) to it.`;
    case 'ECONNRESET':
      return `${t.hostname}:${t.port} closed the connection: check sshd's logs there (MaxStartups, AllowUsers, firewall).`;
    default:
      return `Check that ${t.hostname} is reachable and sshd runs on port ${t.port} (try \`ssh ${t.alias}\`).`;
  }
}

/**
 * Connects, verifies the host key, authenticates, then opens (and closes) one session channel: sshd only turns on
 * TCP_NODELAY for a connection once a session runs, and without it a reply sshd sends in several packets waits ~43 ms
 * for a delayed ACK. Our own socket gets TCP_NODELAY too; both are needed (measured in test/integration/ssh.test.ts).
 * The caller owns the returned Client and must listen for its 'error' and 'close'.
 */
export async function connectSsh(target: SshTarget, options: ConnectOptions = {}): Promise<Client> {
  const name = describeTarget(target);
  const entries = await loadKnownHosts(target);
  const identities = await loadIdentities(target.identityFiles);
  const lookup = knownHostsKey(target);

  const agent = options.agentSocket
    ? new ObservedAgent(new OpenSSHAgent(options.agentSocket), target.identitiesOnly ? identities.publicBlobs : undefined)
    : undefined;

  const conn = new Client();
  let refusal: FerryError | undefined;
  let acceptedKey: Buffer | undefined;

  const hostVerifier = (key: Buffer, verify: (ok: boolean) => void): void => {
    // ssh2 re-verifies at every re-key; the key accepted at the first exchange stays accepted.
    if (acceptedKey?.equals(key)) return verify(true);
    const keyType = keyTypeOfBlob(key) ?? 'unknown';
    const check = checkHostKey(entries, lookup.host, lookup.port, keyType, key);
    const action = hostKeyAction(check.status, target.strictHostKeyChecking);
    if (action === 'refuse') {
      refusal = hostKeyError(target, check.status, key, keyType, check.entry, check.knownTypes);
      return verify(false);
    }
    if (action === 'accept') {
      acceptedKey = key;
      return verify(true);
    }
    recordHostKey(target, key).then(
      () => {
        acceptedKey = key;
        verify(true);
      },
      (err: unknown) => {
        refusal = new FerryError('known-hosts-unwritable',
          `${name}: cannot record the new host key in ${target.userKnownHostsFiles[0]}: ${(err as Error).message}`,
          'Make the first UserKnownHostsFile writable, or add the key yourself with ssh-keyscan.', { cause: err });
        verify(false);
      },
    );
  };

  // Agent first (OpenSSH order), then IdentityFiles the agent did not already offer: sshd's MaxAuthTries counts both.
  const tried: string[] = [];
  let step = 0;
  const steps: Array<'agent' | Identity> = [...(agent ? (['agent'] as const) : []), ...identities.usable];
  const authHandler = (methodsLeft: AuthenticationType[] | null, _partial: boolean | null, next: NextAuthHandler): void => {
    if (methodsLeft && !methodsLeft.includes('publickey')) return next(false as unknown as AnyAuthMethod);
    while (step < steps.length) {
      const s = steps[step++];
      if (s === 'agent') return next({ type: 'agent', username: target.user, agent: agent! });
      const blob = s.key.getPublicSSH();
      if (agent?.offered.some((k) => k.getPublicSSH().equals(blob))) continue;
      tried.push(s.path);
      return next({ type: 'publickey', username: target.user, key: s.key });
    }
    next(false as unknown as AnyAuthMethod);
  };

  const readyTimeout =
    options.readyTimeoutMs ?? (target.connectTimeoutSec ? target.connectTimeoutSec * 1000 : DEFAULT_READY_TIMEOUT_MS);
  const config: ConnectConfig = {
    host: target.hostname,
    port: target.port,
    username: target.user,
    readyTimeout,
    keepaliveInterval: options.keepaliveIntervalMs ?? 0,
    hostVerifier,
    authHandler: authHandler as ConnectConfig['authHandler'],
    algorithms: {
      serverHostKey: preferredHostKeyAlgorithms(
        knownKeyTypes(entries, lookup.host, lookup.port),
      ) as NonNullable<ConnectConfig['algorithms']>['serverHostKey'],
    },
  };

  await new Promise<void>((resolve, reject) => {
    const cleanup = (): void => {
      conn.off('ready', onReady);
      conn.off('error', onError);
      conn.off('close', onClose);
    };
    const fail = (err: FerryError): void => {
      cleanup();
      // Keep a listener: ssh2 may still report the socket's end after we gave up on it.
      conn.on('error', () => undefined);
      conn.destroy();
      reject(err);
    };
    const onReady = (): void => {
      cleanup();
      resolve();
    };
    const onError = (err: Error & { level?: string; code?: string }): void => {
      if (err.level === 'agent') return; // ssh2 goes on with the next method; the agent's error is kept for the message
      if (refusal) return fail(refusal);
      if (err.level === 'client-authentication' || /authentication/i.test(err.message)) {
        return fail(authError(target, tried, agent, identities.skipped, err));
      }
      if (err.level === 'client-timeout') {
        return fail(new FerryError('ssh-timeout', `${name}: no SSH handshake within ${readyTimeout} ms`,
          `Check that ${target.hostname}:${target.port} is an SSH server and reachable (firewalls that drop packets look like this).`,
          { cause: err }));
      }
      if (err.level === 'client-socket' || err.level === 'client-dns') {
        return fail(new FerryError('ssh-connect-failed', `${name}: cannot connect: ${err.message}`,
          connectFailureHint(err.code, target), { cause: err }));
      }
      fail(new FerryError('ssh-connect-failed', `${name}: SSH handshake failed: ${err.message}`,
        connectFailureHint(err.code, target), { cause: err }));
    };
    const onClose = (): void => {
      fail(refusal ?? new FerryError('ssh-connect-failed', `${name}: the connection closed during the SSH handshake`,
        connectFailureHint(undefined, target)));
    };
    conn.on('ready', onReady);
    conn.on('error', onError);
    conn.on('close', onClose);
    conn.connect(config);
    // Our side of the Nagle problem: ssh2 writes a forwarded chunk as more than one segment, and without NODELAY the
    // second waits for the peer's delayed ACK (measured: 44 ms per round trip even after the session below).
    conn.setNoDelay(true);
    // ...and those pieces go out as one segment per tick rather than one each. ssh2 keeps the socket it made in
    // `_sock` (ssh2 1.x); should that change, this costs CPU, not correctness, and the log says so once.
    const sock = (conn as unknown as { _sock?: unknown })._sock;
    if (sock instanceof Socket) coalesceWrites(sock);
    else options.log?.(`${name}: cannot reach ssh2's socket to merge its writes (ssh2 internals changed); each SSH packet costs several syscalls`);
  });

  await openSession(conn, target, options.sessionTimeoutMs ?? DEFAULT_SESSION_TIMEOUT_MS);
  return conn;
}

/** exec `true` and wait for its channel to close, bounded; see connectSsh for why. */
function openSession(conn: Client, target: SshTarget, timeoutMs: number): Promise<void> {
  const name = describeTarget(target);
  return new Promise((resolve, reject) => {
    let done = false;
    const finish = (err?: FerryError): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      conn.off('error', onConnError);
      if (!err) return resolve();
      conn.on('error', () => undefined); // as in connectSsh: we are dropping this connection
      conn.end();
      reject(err);
    };
    const timer = setTimeout(
      () => finish(new FerryError('ssh-timeout', `${name}: the session channel did not complete within ${timeoutMs} ms`,
        `Check that \`ssh ${target.alias} true\` returns promptly (a slow login shell or ForceCommand delays it).`)),
      timeoutMs,
    );
    const onConnError = (err: Error): void =>
      finish(new FerryError('ssh-connect-failed', `${name}: the connection failed right after login: ${err.message}`,
        connectFailureHint(undefined, target), { cause: err }));
    conn.on('error', onConnError);
    conn.exec('true', (err, stream) => {
      if (err) {
        return finish(new FerryError('ssh-connect-failed', `${name}: sshd refused a session channel: ${err.message}`,
          'Ferry runs one command per connection so that sshd turns off Nagle; allow sessions for this user (no `restrict` without a command).',
          { cause: err }));
      }
      stream.on('close', () => finish());
      stream.resume();
      stream.stderr.resume();
    });
  });
}

export function hostKeyError(
  t: SshTarget,
  status: 'unknown' | 'changed' | 'revoked' | 'match',
  key: Buffer,
  keyType: string,
  entry: KnownHostsEntry | undefined,
  knownTypes: readonly string[],
): FerryError {
  const name = describeTarget(t);
  const fp = fingerprintSha256(key);
  const { host, port } = knownHostsKey(t);
  const where = entry ? `${entry.file}:${entry.line}` : '';
  if (status === 'changed') {
    return new FerryError('host-key-changed',
      `${name}: the ${keyType} host key changed (now ${fp}; ${where} has another): someone may be intercepting the connection`,
      `If the change is expected (reinstalled host), run \`ssh-keygen -f ${entry?.file ?? '~/.ssh/known_hosts'} -R '${hostLookupName(host, port)}'\` and connect once with \`ssh ${t.alias}\`.`);
  }
  if (status === 'revoked') {
    return new FerryError('host-key-revoked', `${name}: the host key ${fp} is marked @revoked in ${where}`,
      'Do not use this key: ask the host\'s administrator for a new host key, then update known_hosts.');
  }
  const files = [...t.userKnownHostsFiles, ...t.globalKnownHostsFiles].join(', ') || 'no known_hosts file';
  const others = knownTypes.length ? ` (keys of other types are known: ${knownTypes.join(', ')})` : '';
  const add = t.hostKeyAlias
    ? `\`ssh ${t.alias}\` once and answer yes`
    : `\`ssh-keyscan -p ${t.port} ${t.hostname} >> ${t.userKnownHostsFiles[0] ?? '~/.ssh/known_hosts'}\` or \`ssh ${t.alias}\` once`;
  return new FerryError('host-key-unknown',
    `${name}: the host key ${keyType} ${fp} is not in ${files}${others}; StrictHostKeyChecking is ${t.strictHostKeyChecking} and Ferry cannot ask`,
    `Verify the fingerprint with the host's administrator, then ${add}.`);
}

function authError(
  t: SshTarget,
  tried: readonly string[],
  agent: ObservedAgent | undefined,
  skipped: readonly string[],
  cause: Error,
): FerryError {
  const offered = [...(agent?.offered.map(agentKeyName) ?? []), ...tried];
  const parts = [offered.length ? `tried ${offered.join(', ')}` : 'no usable identity was found'];
  if (skipped.length) parts.push(`skipped ${skipped.join(', ')}`);
  if (agent?.error) parts.push(`agent: ${agent.error.message}`);
  if (!agent) parts.push('no ssh-agent');
  return new FerryError('ssh-auth-failed', `${describeTarget(t)}: authentication failed as ${t.user} (${parts.join('; ')})`,
    'Load the key into the agent with `ssh-add` (keys with a passphrase need it) or set IdentityFile for this host, and check its authorized_keys.',
    { cause });
}
