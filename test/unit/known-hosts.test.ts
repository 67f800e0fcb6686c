import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  checkHostKey,
  fingerprintSha256,
  formatKnownHostsLine,
  hostKeyAction,
  hostLookupName,
  knownKeyTypes,
  matchPattern,
  parseKnownHosts,
  preferredHostKeyAlgorithms,
  type HostKeyStatus,
} from '../../coordinator/known-hosts';

let dir: string;
/** Real public keys made by ssh-keygen: name -> "type base64". */
const keys: Record<string, string> = {};
const blob = (name: string): Buffer => Buffer.from(keys[name].split(' ')[1], 'base64');
const type = (name: string): string => keys[name].split(' ')[0];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-kh-'));
  for (const [name, t] of [['a', 'ed25519'], ['b', 'ed25519'], ['c', 'ed25519'], ['e', 'ecdsa'], ['rsa', 'rsa']] as const) {
    const path = join(dir, name);
    execFileSync('ssh-keygen', ['-q', '-t', t, ...(t === 'rsa' ? ['-b', '2048'] : []), '-N', '', '-f', path]);
    keys[name] = readFileSync(`${path}.pub`, 'utf8').trim().split(/\s+/).slice(0, 2).join(' ');
  }
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('matchPattern', () => {
  it.each([
    ['host.example.com', 'host.example.com', true],
    ['HOST.example.com', 'host.EXAMPLE.com', true],
    ['a.example.com', '*.example.com', true],
    ['example.com', '*.example.com', false],
    ['web1', 'web?', true],
    ['web10', 'web?', false],
    ['anything', '*', true],
    ['[a.example.com]:2222', '*.example.com', false],
    ['[a.example.com]:2222', '[*.example.com]:2222', true],
    ['abcabd', '*abd', true],
    ['10.0.0.1', '10.0.0.*', true],
    ['', '*', true],
    ['x', '', false],
  ])('%s vs %s -> %s', (name, pattern, expected) => {
    expect(matchPattern(name, pattern)).toBe(expected);
  });
});

describe('hostLookupName', () => {
  it.each([
    ['Build.Example.com', 22, 'build.example.com'],
    ['host', 2222, '[host]:2222'],
    ['10.1.2.3', 22, '10.1.2.3'],
  ])('%s:%d -> %s', (host, port, expected) => expect(hostLookupName(host, port)).toBe(expected));
});

describe('checkHostKey on plain entries', () => {
  const file = () =>
    [
      '# comment line',
      '',
      `plain.example ${keys.a}`,
      `one,two.example,10.0.0.5 ${keys.a} comment with spaces`,
      `[porty]:2222 ${keys.b}`,
      `porty ${keys.a}`,
      `*.wild.example,!secret.wild.example ${keys.a}`,
      `secret.wild.example ${keys.b}`,
      `@revoked * ${keys.c}`,
      `@cert-authority *.example ${keys.b}`,
      `multi ${keys.a}`,
      `multi ${keys.e}`,
      `rsaonly ${keys.rsa}`,
      `garbage-line-without-key`,
      `@unknown-marker plain.example ${keys.b}`,
      `bad.example ssh-ed25519 !!!notbase64`,
    ].join('\n');

  const cases: Array<[string, string, number, string, HostKeyStatus, number | undefined]> = [
    ['exact name, same key', 'plain.example', 22, 'a', 'match', 3],
    ['exact name, other key of the same type', 'plain.example', 22, 'b', 'changed', 3],
    ['unknown host', 'nowhere.example', 22, 'a', 'unknown', undefined],
    ['comma list, 2nd name', 'two.example', 22, 'a', 'match', 4],
    ['comma list, address', '10.0.0.5', 22, 'a', 'match', 4],
    ['[host]:port for a non-22 port', 'porty', 2222, 'b', 'match', 5],
    ['[host]:port does not apply to port 22', 'porty', 22, 'b', 'changed', 6],
    ['a non-22 port does not fall back to the bare name', 'porty', 2200, 'a', 'unknown', undefined],
    ['wildcard', 'x.wild.example', 22, 'a', 'match', 7],
    ['wildcard, changed', 'x.wild.example', 22, 'b', 'changed', 7],
    ['negated name skips the wildcard line', 'secret.wild.example', 22, 'b', 'match', 8],
    ['negated name: the wildcard key is not accepted', 'secret.wild.example', 22, 'a', 'changed', 8],
    ['@revoked wins over any match', 'plain.example', 22, 'c', 'revoked', 9],
    ['@revoked applies to unknown hosts too', 'nowhere.example', 22, 'c', 'revoked', 9],
    ['@cert-authority is ignored', 'foo.example', 22, 'b', 'unknown', undefined],
    ['several types: each matches', 'multi', 22, 'e', 'match', 12],
    ['other type known, this one is not: unknown', 'rsaonly', 22, 'a', 'unknown', undefined],
    ['case-insensitive names', 'PLAIN.example', 22, 'a', 'match', 3],
  ];

  it.each(cases)('%s', (_label, host, port, key, status, line) => {
    const entries = parseKnownHosts(file(), 'kh');
    const result = checkHostKey(entries, host, port, type(key), blob(key));
    expect(result.status).toBe(status);
    expect(result.entry?.line).toBe(line);
    if (line) expect(result.entry?.file).toBe('kh');
  });

  it('skips malformed and unknown-marker lines', () => {
    const entries = parseKnownHosts(file(), 'kh');
    expect(entries.map((e) => e.line)).toEqual([3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
    expect(entries.find((e) => e.line === 10)?.marker).toBe('cert-authority');
  });

  it('reports the key types known for a host', () => {
    const entries = parseKnownHosts(file(), 'kh');
    expect(knownKeyTypes(entries, 'multi', 22)).toEqual(['ssh-ed25519', 'ecdsa-sha2-nistp256']);
    expect(checkHostKey(entries, 'rsaonly', 22, type('a'), blob('a')).knownTypes).toEqual(['ssh-rsa']);
  });
});

describe('hashed entries made by ssh-keygen -H', () => {
  it.each([
    ['hashed.example', 22, 'a', 'match'],
    ['hashed.example', 22, 'b', 'changed'],
    ['other.example', 22, 'b', 'match'],
    ['hport.example', 2222, 'a', 'match'],
    ['hport.example', 22, 'a', 'unknown'],
    ['10.9.8.7', 22, 'a', 'match'],
    ['not-there.example', 22, 'a', 'unknown'],
  ] as const)('%s:%d key %s -> %s', (host, port, key, status) => {
    const path = join(dir, `hashed-${host}-${port}-${key}`);
    writeFileSync(path, [
      `hashed.example,other.example ${keys.a}`,
      `other.example ${keys.b}`,
      `[hport.example]:2222 ${keys.a}`,
      `10.9.8.7 ${keys.a}`,
      '',
    ].join('\n'));
    execFileSync('ssh-keygen', ['-H', '-f', path], { stdio: 'ignore' });
    const text = readFileSync(path, 'utf8');
    expect(text).not.toContain('example'); // really hashed
    const entries = parseKnownHosts(text, path);
    expect(entries.every((e) => e.hosts.kind === 'hashed')).toBe(true);
    expect(checkHostKey(entries, host, port, type(key), blob(key)).status).toBe(status);
  });
});

describe('formatKnownHostsLine', () => {
  it('writes lines OpenSSH finds: plain, [host]:port and hashed', () => {
    const path = join(dir, 'written');
    const salt = Buffer.alloc(20, 7);
    writeFileSync(path, [
      formatKnownHostsLine('plain.example', 22, blob('a')),
      formatKnownHostsLine('porty', 2222, blob('a')),
      formatKnownHostsLine('hashed.example', 22, blob('b'), salt),
      '',
    ].join('\n'));
    // ssh-keygen -F looks names up the way ssh does; it must find every line we wrote.
    for (const name of ['plain.example', '[porty]:2222', 'hashed.example']) {
      const out = execFileSync('ssh-keygen', ['-F', name, '-f', path], { encoding: 'utf8' });
      expect(out).toContain('found');
    }
    const entries = parseKnownHosts(readFileSync(path, 'utf8'), path);
    expect(checkHostKey(entries, 'porty', 2222, type('a'), blob('a')).status).toBe('match');
    expect(checkHostKey(entries, 'hashed.example', 22, type('b'), blob('b')).status).toBe('match');
  });
});

describe('fingerprintSha256', () => {
  it('equals ssh-keygen -l', () => {
    const out = execFileSync('ssh-keygen', ['-l', '-f', join(dir, 'a.pub')], { encoding: 'utf8' });
    expect(out).toContain(fingerprintSha256(blob('a')));
  });
});

describe('hostKeyAction (StrictHostKeyChecking for a daemon)', () => {
  it.each([
    ['match', 'yes', 'accept'],
    ['match', 'no', 'accept'],
    ['unknown', 'yes', 'refuse'],
    ['unknown', 'ask', 'refuse'],
    ['unknown', 'accept-new', 'accept-and-record'],
    ['unknown', 'no', 'accept-and-record'],
    ['changed', 'no', 'refuse'],
    ['changed', 'accept-new', 'refuse'],
    ['revoked', 'no', 'refuse'],
  ] as const)('%s under %s -> %s', (status, strict, action) => {
    expect(hostKeyAction(status, strict)).toBe(action);
  });
});

describe('preferredHostKeyAlgorithms', () => {
  it.each([
    [[], ['ssh-ed25519', 'ecdsa-sha2-nistp256']],
    [['ssh-rsa'], ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa', 'ssh-ed25519']],
    [['ecdsa-sha2-nistp256', 'ssh-ed25519'], ['ecdsa-sha2-nistp256', 'ssh-ed25519', 'ecdsa-sha2-nistp384']],
    [['sk-ssh-ed25519@openssh.com'], ['ssh-ed25519']],
  ])('%j first', (known, prefix) => {
    const out = preferredHostKeyAlgorithms(known);
    expect(out.slice(0, prefix.length)).toEqual(prefix);
    expect(new Set(out).size).toBe(out.length);
    expect(out).toHaveLength(7);
  });
});
