import { describe, expect, it } from 'vitest';
import { parseHostEntry, parseHosts, parseHostsConfig } from '../../coordinator/hosts';
import { hostsSource } from '../../coordinator/pool';

const hostsText = (env: NodeJS.ProcessEnv, read: (p: string) => string) => hostsSource(env, read).text;

describe('FERRY_HOSTS entries', () => {
  it.each([
    ['build1', { name: 'build1', kind: 'ssh', alias: 'build1', slots: undefined, worker: { kind: 'tcp', port: 3633 } }],
    ['build1/16', { name: 'build1', kind: 'ssh', alias: 'build1', slots: 16 }],
    ['alice@build1/8', { name: 'alice@build1', user: 'alice', alias: 'build1', slots: 8 }],
    ['build1:2222/8', { name: 'build1:2222', sshPort: 2222, alias: 'build1', slots: 8 }],
    ['bob@10.0.0.5:22/4', { name: 'bob@10.0.0.5:22', user: 'bob', alias: '10.0.0.5', sshPort: 22, slots: 4 }],
    ['build1/8,port=4000', { worker: { kind: 'tcp', port: 4000 } }],
    ['build1/8,socket=/run/ferry/worker.sock', { worker: { kind: 'unix', path: '/run/ferry/worker.sock' } }],
    ['w1/2,direct=/tmp/w1.sock', { kind: 'direct', name: 'w1', worker: { kind: 'unix', path: '/tmp/w1.sock' } }],
    ['localhost/2', { kind: 'local', slots: 2 }],
    ['build.example.com/32', { alias: 'build.example.com', slots: 32 }],
  ])('%s', (entry, expected) => {
    expect(parseHostEntry(entry)).toMatchObject(expected);
  });

  it.each([
    ['build1/0', /slots must be a positive whole number/],
    ['build1/x', /slots must be a positive whole number/],
    ['@build1', /empty user name/],
    ['build1:70000', /SSH port must be at most 65535/],
    ['build1,port=0', /worker port must be a positive whole number/],
    ['build1,socket=relative.sock', /socket= needs an absolute path/],
    ['build1,direct=x', /direct= needs an absolute path/],
    ['build1,lzo', /unknown option "lzo"/],
    ['bad host!/2', /is not a host name/],
  ])('refuses %s with a message that shows the syntax', (entry, message) => {
    expect(() => parseHostEntry(entry)).toThrow(message);
    try {
      parseHostEntry(entry);
    } catch (err) {
      expect((err as { hint?: string }).hint).toMatch(/FERRY_HOSTS=/);
    }
  });

  it('splits on any white space and refuses duplicates', () => {
    expect(parseHosts('  a/2\n b/4\tc ').map((h) => h.name)).toEqual(['a', 'b', 'c']);
    expect(parseHosts('')).toEqual([]);
    expect(() => parseHosts('a/2 a/4')).toThrow(/listed twice/);
  });
});

describe('where hosts come from', () => {
  const files: Record<string, string> = {};
  const read = (path: string) => {
    if (path in files) return files[path];
    throw Object.assign(new Error('missing'), { code: 'ENOENT' });
  };

  it('prefers FERRY_HOSTS, even when empty', () => {
    files['/h/.config/ferry/hosts'] = 'fromfile/4';
    expect(hostsText({ FERRY_HOSTS: ' a/2 b/2 ', HOME: '/h' }, read)).toBe('a/2 b/2');
    expect(hostsText({ FERRY_HOSTS: '', HOME: '/h' }, read)).toBe('');
  });

  it('reads the user hosts file, then /etc/ferry/hosts, dropping comments', () => {
    files['/h/.config/ferry/hosts'] = '# build farm\nb1/16  # fast\nb2/16\n';
    expect(hostsText({ HOME: '/h' }, read)).toBe('b1/16 b2/16');
    delete files['/h/.config/ferry/hosts'];
    files['/etc/ferry/hosts'] = 'shared/8';
    expect(hostsText({ HOME: '/h' }, read)).toBe('shared/8');
    expect(hostsText({ HOME: '/h', XDG_CONFIG_HOME: '/x' }, read)).toBe('shared/8');
    delete files['/etc/ferry/hosts'];
    expect(hostsText({ HOME: '/h' }, read)).toBe('');
  });
});

describe('hosts configuration', () => {
  it('reads localhost/N and --localslots_cpp in FERRY_HOSTS', () => {
    const config = parseHostsConfig('localhost/3 a/8 b --localslots_cpp=1', 'ferry');
    expect(config.remotes.map((h) => h.name)).toEqual(['a', 'b']);
    expect(config.localSlots).toBe(3);
    expect(config.cppSlots).toBe(1);
    expect(parseHostsConfig('localhost a', 'ferry').localSlots).toBe(2);
    expect(parseHostsConfig('a', 'ferry').localSlots).toBe(0);
  });

  it.each([
    ['@build1/8', ['build1'], [8], 0],
    ['alice@build1/8 bob@build2/4', ['alice@build1', 'bob@build2'], [8, 4], 0],
    ['build1/16 build2:3632/8 localhost/2', ['build1', 'build2'], [16, 8], 2],
    ['build1:3632/8,lzo,cpp', ['build1'], [8], 0],
    ['build1/8:3632', ['build1'], [8], 0],
    ['@build1/8:/usr/bin/distccd --localslots=4', ['build1'], [8], 4],
    ['--randomize 10.0.0.5/4 +zeroconf', ['10.0.0.5'], [4], 0],
  ])('reads DISTCC_HOSTS %j', (text, names, slots, local) => {
    const config = parseHostsConfig(text, 'distcc');
    expect(config.remotes.map((h) => h.name)).toEqual(names);
    expect(config.remotes.map((h) => h.slots)).toEqual(slots);
    expect(config.remotes.every((h) => h.kind === 'ssh')).toBe(true);
    expect(config.localSlots).toBe(local);
  });

  it('notes what it ignores in DISTCC_HOSTS', () => {
    const notes = parseHostsConfig('--randomize build1:3632/8,lzo @b2/4:/opt/distccd +zeroconf', 'distcc').notes.join('\n');
    expect(notes).toMatch(/--randomize ignored/);
    expect(notes).toMatch(/options ,lzo ignored/);
    expect(notes).toMatch(/distccd port 3632 ignored/);
    expect(notes).toMatch(/remote command "\/opt\/distccd" ignored/);
    expect(notes).toMatch(/\+zeroconf ignored/);
  });

  it('takes DISTCC_HOSTS only when FERRY_HOSTS and the hosts files are absent', () => {
    const none = () => {
      throw Object.assign(new Error('missing'), { code: 'ENOENT' });
    };
    expect(hostsSource({ HOME: '/h', DISTCC_HOSTS: '@b/8' }, none)).toEqual({ text: '@b/8', syntax: 'distcc', origin: 'DISTCC_HOSTS' });
    expect(hostsSource({ HOME: '/h', DISTCC_HOSTS: '@b/8', FERRY_HOSTS: 'c/2' }, none).syntax).toBe('ferry');
    expect(hostsSource({ HOME: '/h' }, none).text).toBe('');
  });
});
