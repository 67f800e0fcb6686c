import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FerryError } from '../../proto/errors';
import {
  chooseConfigPath,
  closestKey,
  DEFAULT_CONFIG_PATH,
  DEFAULT_SETTINGS,
  effectiveCounts,
  mergeSettings,
  parseWorkerConfig,
} from '../../worker/config';
import { parseGroupEntry } from '../../worker/server';

function parseError(text: string): FerryError {
  try {
    parseWorkerConfig(text, '/etc/ferry/worker.conf');
  } catch (err) {
    expect(err).toBeInstanceOf(FerryError);
    return err as FerryError;
  }
  throw new Error(`expected ${JSON.stringify(text)} to be refused`);
}

describe('worker.conf', () => {
  it.each([
    ['', {}],
    ['# only a comment\n\n   \n', {}],
    ['listen = unix:/run/ferry/worker.sock', { listen: { kind: 'unix', path: '/run/ferry/worker.sock' } }],
    ['listen=127.0.0.1:4000', { listen: { kind: 'tcp', host: '127.0.0.1', port: 4000 } }],
    ['slots = 0', { slots: 0 }],
    ['slots = 12   # one per core is 16', { slots: 12 }],
    ['allow = gcc, g++ ,clang-16', { allow: ['gcc', 'g++', 'clang-16'] }],
    ['tmpdir = /var/tmp/', { tmpdir: '/var/tmp' }],
    ['max_source_mb = 64', { maxSourceMb: 64 }],
    ['max_compressed_source_mb = 16', { maxCompressedSourceMb: 16 }],
    ['max_object_mb = 100', { maxObjectMb: 100 }],
    ['job_timeout = 600', { jobTimeoutSec: 600 }],
    ['max_jobs_per_connection = 4', { maxJobsPerConnection: 4 }],
    ['socket_group = ferry', { socketGroup: 'ferry' }],
    ['allowed_sysroots = /opt/sysroots/arm/, /opt/x/../y', { allowedSysroots: ['/opt/sysroots/arm', '/opt/y'] }],
    ['allowed_sysroots =', { allowedSysroots: [] }],
    ['gcc_driver = always', { gccDriver: 'always' }],
    ['gcc_driver = learn', { gccDriver: 'learn' }],
    ['\tslots\t=\t3\t\r', { slots: 3 }],
    ['tmpdir = /srv/a#b', { tmpdir: '/srv/a#b' }],
  ])('reads %j', (text, expected) => {
    expect(parseWorkerConfig(text, 'worker.conf')).toEqual(expected);
  });

  it.each([
    ['slots = eight', 1, /slots must be a whole number/, /slots = 8/],
    ['slots = -1', 1, /slots must be a whole number/, /slots = 8/],
    ['\n\nmax_source_mb = 0', 3, /max_source_mb must be a whole number of at least 1/, /max_source_mb = 256/],
    ['job_timeout = 1.5', 1, /job_timeout must be a whole number/, /job_timeout = 1800/],
    ['listen = 0.0.0.0:3633', 1, /refuses to listen on 0\.0\.0\.0:3633/, /listen = unix:\/run\/ferry\/worker\.sock/],
    ['listen = unix:relative.sock', 1, /must be absolute/, /listen = unix:/],
    ['allow = gcc,/usr/bin/evil', 1, /"\/usr\/bin\/evil" is not a compiler name/, /allow = gcc,g\+\+/],
    ['allow =', 1, /names no compiler/, /allow = /],
    ['tmpdir = tmp', 1, /tmpdir must be an absolute path/, /tmpdir = \/var\/tmp/],
    ['socket_group = bad group', 1, /"bad group" is not a group name/, /socket_group = ferry/],
    ['allowed_sysroots = relative/root', 1, /each allowed_sysroots entry must be an absolute path/, /allowed_sysroots = \//],
    ['gcc_driver = never', 1, /gcc_driver must be learn or always, not "never"/, /gcc_driver = learn/],
    ['slots 8', 1, /"slots 8" is not a "key = value" line/, /key = value/],
    ['max_source_megabytes = 3', 1, /unknown key "max_source_megabytes"/, /Known keys: listen, slots/],
    ['max-source-mb = 3', 1, /unknown key "max-source-mb"/, /Did you mean "max_source_mb"\?/],
    ['jobtimeout = 3', 1, /unknown key "jobtimeout"/, /Did you mean "job_timeout"\?/],
    ['slots = 1\nslots = 2', 2, /"slots" is set again \(first set on line 1\)/, /Keep one "slots = …" line/],
  ])('refuses %j at line %i', (text, line, message, hint) => {
    const err = parseError(text);
    expect(err.code).toBe('worker-config-invalid');
    expect(err.message.startsWith(`/etc/ferry/worker.conf:${line}: `)).toBe(true);
    expect(err.message).toMatch(message);
    expect(err.hint).toMatch(hint);
  });

  it('suggests only near keys', () => {
    expect(closestKey('slot')).toBe('slots');
    expect(closestKey('max_object_size')).toBe('max_object_mb');
    expect(closestKey('colour')).toBeUndefined();
  });

  it('parses the shipped default file into the documented settings', () => {
    const text = readFileSync(join(__dirname, '..', '..', 'worker', 'worker.conf'), 'utf8');
    const settings = mergeSettings(parseWorkerConfig(text, 'worker/worker.conf'), {});
    expect(settings).toEqual({
      ...DEFAULT_SETTINGS,
      listen: { kind: 'unix', path: '/run/ferry/worker.sock' },
      socketGroup: 'ferry',
      slots: 0,
      maxJobsPerConnection: 0,
    });
    expect(settings.allow).toBeUndefined();
    expect(settings.allowedSysroots).toEqual([]);
  });

  it('lets the command line override the file, and the file the defaults', () => {
    const merged = mergeSettings({ slots: 4, maxSourceMb: 8, socketGroup: 'ferry' }, { slots: 2, listen: { kind: 'tcp', host: '127.0.0.1', port: 9 } });
    expect(merged.slots).toBe(2);
    expect(merged.maxSourceMb).toBe(8);
    expect(merged.socketGroup).toBe('ferry');
    expect(merged.listen).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 9 });
    expect(merged.maxObjectMb).toBe(DEFAULT_SETTINGS.maxObjectMb);
  });

  it.each([
    [undefined, true, DEFAULT_CONFIG_PATH],
    [undefined, false, undefined],
    [true, true, DEFAULT_CONFIG_PATH],
    [false, true, undefined],
    ['/srv/w.conf', true, '/srv/w.conf'],
  ])('config option %j with the file present: %j reads %j', (option, present, expected) => {
    expect(chooseConfigPath(option, () => present)).toBe(expected);
  });

  it('refuses a --config file that does not exist', () => {
    expect(() => chooseConfigPath('/nowhere/w.conf', () => false)).toThrow(/config file \/nowhere\/w.conf does not exist/);
  });

  it.each([
    [{ slots: 0, maxJobsPerConnection: 0 }, 8, { slots: 8, perConnection: 8 }],
    [{ slots: 3, maxJobsPerConnection: 0 }, 8, { slots: 3, perConnection: 3 }],
    [{ slots: 0, maxJobsPerConnection: 2 }, 8, { slots: 8, perConnection: 2 }],
    [{ slots: 0, maxJobsPerConnection: 0 }, 0, { slots: 1, perConnection: 1 }],
  ])('resolves %j on %i cores to %j', (settings, cores, expected) => {
    expect(effectiveCounts(settings, cores)).toEqual(expected);
  });

  it.each([
    ['ferry:x:998:alice,bob', 'ferry', 998],
    ['ferry:x:998:\n', 'ferry', 998],
    ['ferryx:x:998:', 'ferry', undefined],
    ['ferry:x::', 'ferry', undefined],
    ['', 'ferry', undefined],
  ])('reads the gid of getent line %j', (line, name, gid) => {
    expect(parseGroupEntry(line, name)).toBe(gid);
  });
});
