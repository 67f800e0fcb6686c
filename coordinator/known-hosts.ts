/**
 * known_hosts, read the way OpenSSH reads it (sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT"). Everything here is pure: the
 * caller reads the files and decides what a result means under StrictHostKeyChecking.
 */
import { createHash, createHmac, randomBytes } from 'node:crypto';

export type HostMatcher =
  | { kind: 'patterns'; patterns: Array<{ pattern: string; negated: boolean }> }
  | { kind: 'hashed'; salt: Buffer; hash: Buffer };

export interface KnownHostsEntry {
  file: string;
  /** 1-based, for messages. */
  line: number;
  marker?: 'revoked' | 'cert-authority';
  hosts: HostMatcher;
  /** The type inside the key blob (authoritative; the text field may say otherwise). */
  keyType: string;
  key: Buffer;
}

export type HostKeyStatus = 'match' | 'unknown' | 'changed' | 'revoked';

export interface HostKeyCheck {
  status: HostKeyStatus;
  /** The entry that matched, conflicts (changed) or revokes the key. */
  entry?: KnownHostsEntry;
  /** Key types known for this host (to say "keys of another type are known"). */
  knownTypes: string[];
}

const DEFAULT_SSH_PORT = 22;

/** Reads the type string at the start of an SSH wire-format public key blob. */
export function keyTypeOfBlob(blob: Buffer): string | undefined {
  if (blob.length < 4) return undefined;
  const len = blob.readUInt32BE(0);
  if (len === 0 || len > 64 || 4 + len > blob.length) return undefined;
  return blob.subarray(4, 4 + len).toString('latin1');
}

/** OpenSSH looks hosts up as `host`, or `[host]:port` when the port is not 22; names compare case-insensitively. */
export function hostLookupName(host: string, port: number): string {
  const h = host.toLowerCase();
  return port === DEFAULT_SSH_PORT ? h : `[${h}]:${port}`;
}

/** ssh's `*`/`?` wildcard match (match.c), case-insensitive as match_hostname is. */
export function matchPattern(name: string, pattern: string): boolean {
  const s = name.toLowerCase();
  const p = pattern.toLowerCase();
  let si = 0;
  let pi = 0;
  let starP = -1;
  let starS = 0;
  while (si < s.length) {
    if (pi < p.length && (p[pi] === '?' || p[pi] === s[si])) {
      si++;
      pi++;
    } else if (pi < p.length && p[pi] === '*') {
      starP = pi++;
      starS = si;
    } else if (starP >= 0) {
      pi = starP + 1;
      si = ++starS;
    } else {
      return false;
    }
  }
  while (pi < p.length && p[pi] === '*') pi++;
  return pi === p.length;
}

export function hashHostName(name: string, salt: Buffer): Buffer {
  return createHmac('sha1', salt).update(name).digest();
}

/** A comma list matches when some positive pattern matches and no negated one does. */
export function hostMatches(hosts: HostMatcher, name: string): boolean {
  if (hosts.kind === 'hashed') return hashHostName(name, hosts.salt).equals(hosts.hash);
  let positive = false;
  for (const { pattern, negated } of hosts.patterns) {
    if (!matchPattern(name, pattern)) continue;
    if (negated) return false;
    positive = true;
  }
  return positive;
}

function parseHosts(field: string): HostMatcher | undefined {
  if (field.startsWith('|')) {
    // |1|base64(salt)|base64(HMAC-SHA1(salt, name)); other magic numbers are unknown to OpenSSH too.
    const parts = field.split('|');
    if (parts.length !== 4 || parts[1] !== '1') return undefined;
    const salt = Buffer.from(parts[2], 'base64');
    const hash = Buffer.from(parts[3], 'base64');
    if (salt.length === 0 || hash.length !== 20) return undefined;
    return { kind: 'hashed', salt, hash };
  }
  const patterns = field
    .split(',')
    .filter((p) => p.length > 0)
    .map((p) => (p.startsWith('!') ? { pattern: p.slice(1), negated: true } : { pattern: p, negated: false }));
  return patterns.length ? { kind: 'patterns', patterns } : undefined;
}

/** Parses one file's text. Malformed lines are left out, as OpenSSH skips them. */
export function parseKnownHosts(text: string, file: string): KnownHostsEntry[] {
  const entries: KnownHostsEntry[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const trimmed = lines[i].trim();
    if (!trimmed || trimmed.startsWith('#')) continue;
    const fields = trimmed.split(/\s+/);
    let marker: KnownHostsEntry['marker'];
    if (fields[0].startsWith('@')) {
      const m = fields.shift()!;
      if (m === '@revoked') marker = 'revoked';
      else if (m === '@cert-authority') marker = 'cert-authority';
      else continue;
    }
    if (fields.length < 3) continue;
    const hosts = parseHosts(fields[0]);
    if (!hosts) continue;
    const key = Buffer.from(fields[2], 'base64');
    const keyType = keyTypeOfBlob(key);
    if (!keyType) continue;
    const entry: KnownHostsEntry = { file, line: i + 1, hosts, keyType, key };
    if (marker) entry.marker = marker;
    entries.push(entry);
  }
  return entries;
}

/** The entries that apply to `host`/`port`, @cert-authority lines left out (Ferry does not do host certificates). */
export function entriesForHost(entries: readonly KnownHostsEntry[], host: string, port: number): KnownHostsEntry[] {
  const name = hostLookupName(host, port);
  return entries.filter((e) => e.marker !== 'cert-authority' && hostMatches(e.hosts, name));
}

function typesOf(entries: readonly KnownHostsEntry[]): string[] {
  return [...new Set(entries.map((e) => e.keyType))];
}

/** Key types with a plain (not revoked) entry for the host, in file order. */
export function knownKeyTypes(entries: readonly KnownHostsEntry[], host: string, port: number): string[] {
  return typesOf(entriesForHost(entries, host, port).filter((e) => e.marker === undefined));
}

/**
 * The verdict for `keyBlob` offered by `host` (HostKeyAlias if set, else HostName) on `port`: revoked beats match,
 * a different key of the same type is a change, no entry of that type is unknown.
 */
export function checkHostKey(
  entries: readonly KnownHostsEntry[],
  host: string,
  port: number,
  keyType: string,
  keyBlob: Buffer,
): HostKeyCheck {
  const forHost = entriesForHost(entries, host, port);
  const revoked = forHost.find((e) => e.marker === 'revoked' && e.key.equals(keyBlob));
  const plain = forHost.filter((e) => e.marker === undefined);
  const knownTypes = typesOf(plain);
  if (revoked) return { status: 'revoked', entry: revoked, knownTypes };
  const same = plain.find((e) => e.key.equals(keyBlob));
  if (same) return { status: 'match', entry: same, knownTypes };
  const conflict = plain.find((e) => e.keyType === keyType);
  if (conflict) return { status: 'changed', entry: conflict, knownTypes };
  return { status: 'unknown', knownTypes };
}

/** ssh2's default host key algorithms (constants.js), in its order. */
const SSH2_HOST_KEY_ALGORITHMS = [
  'ssh-ed25519',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'rsa-sha2-512',
  'rsa-sha2-256',
  'ssh-rsa',
];

/**
 * Like OpenSSH, prefer the host key algorithms we already hold keys for, so a host known only by its RSA key is not
 * reported as unknown just because it also offers ed25519.
 */
export function preferredHostKeyAlgorithms(knownTypes: readonly string[]): string[] {
  const first: string[] = [];
  for (const t of knownTypes) {
    const algos = t === 'ssh-rsa' ? ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'] : [t];
    for (const a of algos) if (SSH2_HOST_KEY_ALGORITHMS.includes(a) && !first.includes(a)) first.push(a);
  }
  return [...first, ...SSH2_HOST_KEY_ALGORITHMS.filter((a) => !first.includes(a))];
}

/** One known_hosts line for `host`/`port`, hashed (`HashKnownHosts yes`) when a salt is given. */
export function formatKnownHostsLine(host: string, port: number, keyBlob: Buffer, hashSalt?: Buffer): string {
  const keyType = keyTypeOfBlob(keyBlob);
  if (!keyType) throw new Error('formatKnownHostsLine: not an SSH public key blob');
  const name = hostLookupName(host, port);
  const hostField = hashSalt
    ? `|1|${hashSalt.toString('base64')}|${hashHostName(name, hashSalt).toString('base64')}`
    : name;
  return `${hostField} ${keyType} ${keyBlob.toString('base64')}`;
}

export function newHashSalt(): Buffer {
  return randomBytes(20);
}

/** `SHA256:...` as ssh-keygen -l prints it, for messages the user compares by eye. */
export function fingerprintSha256(keyBlob: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(keyBlob).digest('base64').replace(/=+$/, '');
}

export type HostKeyAction = 'accept' | 'accept-and-record' | 'refuse';

/**
 * OpenSSH's StrictHostKeyChecking for a daemon that cannot ask: yes/ask refuse unknown keys, accept-new and no accept
 * and record them (as ssh does). A changed or revoked key is always refused, unlike ssh's `no`.
 */
export function hostKeyAction(status: HostKeyStatus, strict: 'yes' | 'no' | 'accept-new' | 'ask'): HostKeyAction {
  if (status === 'match') return 'accept';
  if (status !== 'unknown') return 'refuse';
  return strict === 'accept-new' || strict === 'no' ? 'accept-and-record' : 'refuse';
}
