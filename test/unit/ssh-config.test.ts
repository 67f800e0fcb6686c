import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FerryError } from '../../proto/errors';
import {
  expandIdentityTokens,
  expandTilde,
  parseSshG,
  parseStrictHostKeyChecking,
  resolveSshTarget,
  sshGArgs,
  type LocalIdentity,
} from '../../coordinator/ssh-config';

const local: LocalIdentity = { home: '/home/ann', localUser: 'ann', uid: 1000, localHostname: 'desk.lan' };

/** Trimmed `ssh -G` output (OpenSSH 9.2) with the fields Ferry reads. */
const sample = (extra: string[] = [], drop: string[] = []): string =>
  [
    'host build1',
    'user ann',
    'hostname build1.example.com',
    'port 22',
    'identitiesonly no',
    'stricthostkeychecking ask',
    'hashknownhosts yes',
    'connecttimeout none',
    'identityfile ~/.ssh/id_rsa',
    'identityfile ~/.ssh/id_ed25519',
    'userknownhostsfile /home/ann/.ssh/known_hosts /home/ann/.ssh/known_hosts2',
    'globalknownhostsfile /etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2',
  ]
    .filter((l) => !drop.some((d) => l.startsWith(`${d} `)))
    .concat(extra)
    .join('\n') + '\n';

describe('parseSshG', () => {
  it('reads the defaults', () => {
    expect(parseSshG(sample(), 'build1', local)).toEqual({
      alias: 'build1',
      hostname: 'build1.example.com',
      port: 22,
      user: 'ann',
      identityFiles: ['/home/ann/.ssh/id_rsa', '/home/ann/.ssh/id_ed25519'],
      identitiesOnly: false,
      userKnownHostsFiles: ['/home/ann/.ssh/known_hosts', '/home/ann/.ssh/known_hosts2'],
      globalKnownHostsFiles: ['/etc/ssh/ssh_known_hosts', '/etc/ssh/ssh_known_hosts2'],
      strictHostKeyChecking: 'ask',
      hashKnownHosts: true,
    });
  });

  it.each([
    ['true', 'yes'],
    ['yes', 'yes'],
    ['false', 'no'],
    ['no', 'no'],
    ['off', 'no'],
    ['accept-new', 'accept-new'],
    ['ask', 'ask'],
  ])('stricthostkeychecking %s -> %s', (value, expected) => {
    const t = parseSshG(sample([], ['stricthostkeychecking']) + `stricthostkeychecking ${value}\n`, 'b', local);
    expect(t.strictHostKeyChecking).toBe(expected);
    expect(parseStrictHostKeyChecking(value)).toBe(expected);
  });

  it.each<[string, string[], string[], Partial<ReturnType<typeof parseSshG>>]>([
    ['port', ['port 2222'], ['port'], { port: 2222 }],
    ['connect timeout', ['connecttimeout 7'], ['connecttimeout'], { connectTimeoutSec: 7 }],
    ['host key alias', ['hostkeyalias buildbox'], [], { hostKeyAlias: 'buildbox' }],
    ['identities only', ['identitiesonly yes'], ['identitiesonly'], { identitiesOnly: true }],
    ['no identity files', [], ['identityfile'], { identityFiles: [] }],
    ['known hosts none', ['userknownhostsfile none'], ['userknownhostsfile'], { userKnownHostsFiles: [] }],
    ['known hosts with ~', ['userknownhostsfile ~/kh'], ['userknownhostsfile'], { userKnownHostsFiles: ['/home/ann/kh'] }],
    [
      'identity tokens',
      ['identityfile %d/.ssh/%r@%h-%p', 'identityfile /keys/%u/%n/%L/%i/%%'],
      ['identityfile'],
      { identityFiles: ['/home/ann/.ssh/ann@build1.example.com-22', '/keys/ann/build1/desk/1000/%'] },
    ],
    ['unknown token kept', ['identityfile ~/k%Z'], ['identityfile'], { identityFiles: ['/home/ann/k%Z'] }],
    ['hash off', ['hashknownhosts no'], ['hashknownhosts'], { hashKnownHosts: false }],
    ['unknown keys ignored', ['somefuturekey value', 'sendenv LANG'], [], { port: 22 }],
  ])('%s', (_label, extra, drop, expected) => {
    expect(parseSshG(sample(extra, drop), 'build1', local)).toMatchObject(expected);
  });

  it.each([
    ['no hostname', [], ['hostname']],
    ['no user', [], ['user']],
    ['bad port', ['port 0'], ['port']],
    ['bad strict value', ['stricthostkeychecking maybe'], ['stricthostkeychecking']],
    ['bad timeout', ['connecttimeout -3'], ['connecttimeout']],
  ])('rejects output with %s', (_label, extra, drop) => {
    expect(() => parseSshG(sample(extra, drop), 'build1', local)).toThrow(
      expect.objectContaining({ code: 'ssh-config-invalid', message: expect.stringContaining('build1') }),
    );
  });
});

describe('expandTilde / expandIdentityTokens', () => {
  it.each([
    ['~', '/home/ann'],
    ['~/x', '/home/ann/x'],
    ['~other/x', '~other/x'],
    ['/abs/~/x', '/abs/~/x'],
  ])('%s -> %s', (input, out) => expect(expandTilde(input, '/home/ann/')).toBe(out));

  it('uses HostKeyAlias for %k, else the host name', () => {
    const t = { hostname: 'h', port: 22, user: 'u', alias: 'a' };
    expect(expandIdentityTokens('%k', t, local)).toBe('h');
    expect(expandIdentityTokens('%k', { ...t, hostKeyAlias: 'k' }, local)).toBe('k');
  });
});

describe('sshGArgs', () => {
  it.each<[string, NodeJS.ProcessEnv, { user?: string; port?: number }, string[]]>([
    ['plain', {}, {}, ['-G', '--', 'h']],
    ['config file', { FERRY_SSH_CONFIG: '/c' }, {}, ['-G', '-F', '/c', '--', 'h']],
    ['user and port', {}, { user: 'bob', port: 2222 }, ['-G', '-l', 'bob', '-p', '2222', '--', 'h']],
  ])('%s', (_label, env, options, expected) => expect(sshGArgs('h', env, options)).toEqual(expected));
});

describe('resolveSshTarget runs ssh -G', () => {
  let dir: string;
  let env: NodeJS.ProcessEnv;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-sshcfg-'));
    const cfg = join(dir, 'config');
    writeFileSync(
      cfg,
      [
        'Host build1',
        '  HostName 10.1.2.3',
        '  User builder',
        '  Port 2200',
        `  IdentityFile ${dir}/key_%h`,
        '  IdentitiesOnly yes',
        '  StrictHostKeyChecking accept-new',
        `  UserKnownHostsFile ${dir}/kh`,
        '  HostKeyAlias build1-key',
        '  ConnectTimeout 4',
        'Host *.lan',
        '  User lanuser',
        'Host *',
        '  StrictHostKeyChecking yes',
        '',
      ].join('\n'),
    );
    writeFileSync(join(dir, 'bad'), 'Host x\n  NoSuchOption yes\n');
    env = { ...process.env, FERRY_SSH_CONFIG: cfg };
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('merges blocks first-match-wins, as OpenSSH does', async () => {
    const t = await resolveSshTarget('build1', env);
    expect(t).toMatchObject({
      alias: 'build1',
      hostname: '10.1.2.3',
      port: 2200,
      user: 'builder',
      identityFiles: [`${dir}/key_10.1.2.3`],
      identitiesOnly: true,
      strictHostKeyChecking: 'accept-new',
      userKnownHostsFiles: [`${dir}/kh`],
      hostKeyAlias: 'build1-key',
      connectTimeoutSec: 4,
    });
    const other = await resolveSshTarget('box.lan', env);
    expect(other).toMatchObject({ hostname: 'box.lan', user: 'lanuser', port: 22, strictHostKeyChecking: 'yes' });
  });

  it('applies user@ and :port from FERRY_HOSTS over the config', async () => {
    const t = await resolveSshTarget('build1', env, { user: 'override', port: 2022 });
    expect(t).toMatchObject({ user: 'override', port: 2022, hostname: '10.1.2.3' });
  });

  it('reports an invalid config with ssh\'s own message', async () => {
    const err = await resolveSshTarget('x', { ...env, FERRY_SSH_CONFIG: join(dir, 'bad') }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FerryError);
    expect(err).toMatchObject({ code: 'ssh-config-invalid', message: expect.stringMatching(/x: .*[Bb]ad configuration option/) });
  });

  it('reports a missing config file', async () => {
    const err = await resolveSshTarget('x', { ...env, FERRY_SSH_CONFIG: join(dir, 'missing') }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ssh-config-invalid', message: expect.stringContaining('missing') });
  });

  it('reports a missing ssh client', async () => {
    const err = await resolveSshTarget('build1', { ...env, PATH: join(dir, 'nothing-here') }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ssh-missing', message: expect.stringContaining('build1') });
    expect((err as FerryError).hint).toMatch(/openssh-client/);
  });

  it('rejects a host name ssh refuses', async () => {
    const err = await resolveSshTarget('bad host', env).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ssh-config-invalid', message: expect.stringContaining('invalid characters') });
  });
});
