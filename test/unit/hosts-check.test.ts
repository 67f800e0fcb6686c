import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  compilerChecks,
  formatReports,
  parseSocketProbe,
  selectHosts,
  socketProbeCommand,
  versionCheck,
  workerHint,
  type HostReport,
} from '../../cli/hosts-check';
import { parseHostEntry } from '../../coordinator/hosts';
import type { WorkerDescription__Output } from '../../proto/generated/ferry/v1/WorkerDescription';

const gcc = { name: 'gcc', path: '/usr/bin/gcc', version: 'gcc (Debian 12.2.0-14) 12.2.0', target: 'x86_64-linux-gnu', sha256: 'a1', fileVersion: '1:1' };
const clang = { name: 'clang', path: '/usr/bin/clang', version: 'Debian clang version 14.0.6', target: 'x86_64-pc-linux-gnu', sha256: 'b2', fileVersion: '1:1' };

function description(compilers: Array<{ name: string; version: string; target: string; sha256: string }>): WorkerDescription__Output {
  return { version: '0.1.0', hostname: 'b1', slots: 8, running: 0, queued: 0, jobsDone: 0, compilers: compilers.map((c) => ({ path: `/usr/bin/${c.name}`, ...c })) };
}

describe('ferry hosts check decisions', () => {
  it('takes configured hosts by name or alias, else parses the argument as an entry', () => {
    const configured = [parseHostEntry('b1/8,socket=/run/ferry/worker.sock'), parseHostEntry('alice@b2:2222')];
    expect(selectHosts([], configured)).toEqual(configured);
    expect(selectHosts(['b1'], configured)[0].worker).toEqual({ kind: 'unix', path: '/run/ferry/worker.sock' });
    expect(selectHosts(['b2'], configured)[0]).toMatchObject({ user: 'alice', sshPort: 2222 });
    expect(selectHosts(['b3,port=4000'], configured)[0]).toMatchObject({ alias: 'b3', worker: { kind: 'tcp', port: 4000 } });
    expect(() => selectHosts(['b3/x'], configured)).toThrow(/slots must be a positive whole number/);
  });

  it.each([
    ['the same compiler', [gcc], 'pass', /gcc \(Debian 12.2.0-14\) 12.2.0 \(x86_64-linux-gnu\)/, undefined],
    ['a missing compiler', [], 'fail', /the worker does not serve gcc \(it serves nothing\)/, /^Install gcc on b1 \(here: gcc \(Debian 12.2.0-14\) 12.2.0, x86_64-linux-gnu\)/],
    ['another version', [{ ...gcc, version: 'gcc (Debian 13.1.0) 13.1.0' }], 'fail', /there "gcc \(Debian 13.1.0\) 13.1.0" for x86_64-linux-gnu, here "gcc \(Debian 12.2.0-14\) 12.2.0"/, /Install the same gcc on b1/],
    ['another target', [{ ...gcc, target: 'aarch64-linux-gnu' }], 'fail', /for aarch64-linux-gnu, here .* for x86_64-linux-gnu/, /until then gcc jobs compile on this machine/],
  ])('compares %s', (_name, remote, status, detail, hint) => {
    const [result] = compilerChecks([gcc], description(remote), 'b1');
    expect(result.check).toBe('compiler gcc');
    expect(result.status).toBe(status);
    expect(result.detail).toMatch(detail);
    if (hint) expect(result.hint).toMatch(hint);
    else expect(result.hint).toBeUndefined();
  });

  it('checks each local compiler and lists what the worker serves', () => {
    const results = compilerChecks([gcc, clang], description([gcc]), 'b1');
    expect(results.map((r) => [r.check, r.status])).toEqual([['compiler gcc', 'pass'], ['compiler clang', 'fail']]);
    expect(results[1].detail).toBe('the worker does not serve clang (it serves gcc)');
  });

  it.each([
    ['0.1.0', 'pass', '0.1.0, as here'],
    ['0.2.0', 'fail', 'the worker is Ferry 0.2.0, this machine runs 0.1.0'],
    ['', 'fail', 'the worker is Ferry (unknown), this machine runs 0.1.0'],
  ])('version %j', (theirs, status, detail) => {
    const result = versionCheck(theirs, 'b1', '0.1.0');
    expect(result).toMatchObject({ status, detail });
    if (status === 'fail') expect(result.hint).toMatch(/Install Ferry 0.1.0 on b1/);
  });

  it.each([
    ['missing\n', { kind: 'missing' }],
    ['not-socket', { kind: 'not-socket' }],
    ['denied ferry\n', { kind: 'denied', group: 'ferry' }],
    ['denied', { kind: 'denied', group: 'ferry' }],
    ['ok', { kind: 'ok' }],
    ['bash: stat: not found', undefined],
  ])('reads the socket probe %j', (output, expected) => {
    expect(parseSocketProbe(output)).toEqual(expected);
  });

  const socketHost = parseHostEntry('b1,socket=/run/ferry/worker.sock');
  it.each([
    [parseHostEntry('b1'), undefined, '', /Is ferry-worker running on b1\? `ssh b1 systemctl status ferry-worker`.*127\.0\.0\.1:3633/],
    [socketHost, { kind: 'denied', group: 'ferry' } as const, '', /^alice may not open \/run\/ferry\/worker.sock \(group ferry\): on b1 run `sudo usermod -aG ferry alice`/],
    [socketHost, { kind: 'missing' } as const, '', /^There is no \/run\/ferry\/worker.sock on b1\. Is ferry-worker running/],
    [socketHost, { kind: 'not-socket' } as const, '', /is not a socket: check listen/],
    [socketHost, undefined, '', /alice must be in its socket_group \(`sudo usermod -aG ferry alice` there\)/],
    [parseHostEntry('b1'), undefined, '(SSH) Channel open failure: administratively prohibited', /set AllowTcpForwarding yes/],
    [socketHost, undefined, 'administratively prohibited: open failed', /set AllowStreamLocalForwarding yes/],
  ])('advises on a silent worker (%#)', (spec, probe, channelError, expected) => {
    expect(workerHint(spec, 'alice', probe, channelError)).toMatch(expected);
  });

  it('probes sockets with a command the shell runs as written', async () => {
    const dir = mkdtempSync(join(tmpdir(), "ferry probe 'q' "));
    try {
      const probe = (path: string) => execFileSync('sh', ['-c', socketProbeCommand(path)], { encoding: 'utf8' });
      expect(parseSocketProbe(probe(join(dir, 'none.sock')))).toEqual({ kind: 'missing' });
      writeFileSync(join(dir, 'file'), '');
      expect(parseSocketProbe(probe(join(dir, 'file')))).toEqual({ kind: 'not-socket' });
      const server = createServer();
      const socket = join(dir, 'w.sock');
      await new Promise<void>((resolve) => server.listen(socket, resolve));
      // Root may write anywhere, so a denied socket cannot be shown here; the integration test covers a real user.
      expect(parseSocketProbe(probe(socket))).toEqual({ kind: 'ok' });
      await new Promise((resolve) => server.close(resolve));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('formats one line per check, hints under failures, and a summary', () => {
    const reports: HostReport[] = [
      { host: 'b1', ok: true, checks: [{ check: 'ssh login', status: 'pass', detail: 'logged in as alice' }] },
      {
        host: 'b2',
        ok: false,
        checks: [
          { check: 'worker', status: 'fail', detail: 'no worker answered', hint: 'Start it.' },
          { check: 'version', status: 'skip', detail: 'no worker to ask' },
        ],
      },
    ];
    expect(formatReports(reports)).toBe(
      [
        'b1',
        '  ✓ ssh login       logged in as alice',
        'b2',
        '  ✗ worker          no worker answered',
        '                    -> Start it.',
        '  - version         no worker to ask',
        '1 of 2 hosts ready; fix the lines marked ✗',
      ].join('\n'),
    );
  });
});
