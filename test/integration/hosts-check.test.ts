/**
 * `ferry hosts check` against real sshd's in network namespaces: a good host, an unknown host key,
 * sshd stopped, no worker, a worker without some compilers, a missing worker socket. Each failure
 * must be on its own line with what to do, and the exit status 1.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FERRY_VERSION } from '../../proto/version';
import { CHECKED_COMPILERS } from '../../cli/hosts-check';
import { clusterSupport, startCluster, type Cluster } from '../support/cluster';
import { CLI_MAIN, LAUNCHER, run, WORKER_MAIN, type RunResult } from '../support/processes';

const support = clusterSupport();

/** The line of `check` in a text report ("  ✓ worker   …"), and the hint line after it, if any. */
function line(output: string, check: string): { mark: string; text: string; hint?: string } {
  const lines = output.split('\n');
  const index = lines.findIndex((l) => new RegExp(`^  [✓✗-] ${check.replace(/[+]/g, '\\+')} +`).test(l));
  if (index < 0) throw new Error(`no "${check}" line in:\n${output}`);
  const next = lines[index + 1] ?? '';
  return { mark: lines[index].trim()[0], text: lines[index], hint: /^ +-> /.test(next) ? next.trim().slice(3) : undefined };
}

describe.skipIf(!support.ok)('ferry hosts check', () => {
  let cluster: Cluster;
  let scratch: string;
  let env: NodeJS.ProcessEnv;
  /** The cluster's ssh config plus an alias for r1 whose known_hosts is empty. */
  let unknownKeyConfig: string;

  const check = (args: string[], extra: NodeJS.ProcessEnv = {}): Promise<RunResult> =>
    run(process.execPath, [CLI_MAIN, 'hosts', 'check', ...args], { env: { ...env, ...extra }, timeoutMs: 60_000 });

  beforeAll(async () => {
    scratch = mkdtempSync(join(tmpdir(), 'ferry-hosts-check-'));
    cluster = await startCluster({
      remotes: 4,
      worker: {
        command: () => [process.execPath, WORKER_MAIN, '--no-config', '--listen', '127.0.0.1:3633', '--slots', '2'],
        readyPattern: /listening on/,
      },
    });
    // r1: every compiler; r2: gcc and g++ only; r3: sshd but no worker; r4: sshd stopped.
    await cluster.remote('r1').startWorker(['--allow', CHECKED_COMPILERS.join(',')]);
    await cluster.remote('r2').startWorker(['--allow', 'gcc,g++']);
    await cluster.remote('r4').stopSshd();
    const emptyKnownHosts = join(scratch, 'empty_known_hosts');
    writeFileSync(emptyKnownHosts, '');
    unknownKeyConfig = join(scratch, 'ssh_config');
    writeFileSync(
      unknownKeyConfig,
      [
        'Host r1-unknown',
        `  HostName ${cluster.remote('r1').address}`,
        '  User root',
        `  IdentityFile ${cluster.userKeyPath}`,
        '  IdentitiesOnly yes',
        `  UserKnownHostsFile ${emptyKnownHosts}`,
        '  GlobalKnownHostsFile /dev/null',
        '  StrictHostKeyChecking yes',
        '',
        readFileSync(cluster.sshConfigPath, 'utf8'),
      ].join('\n'),
    );
    env = { ...process.env, ...cluster.env(), FERRY_HOSTS: 'r1 r2 r3 r4' };
    delete env.SSH_AUTH_SOCK; // the cluster's key is named by IdentityFile; no agent of the test machine's
  });

  afterAll(async () => {
    await cluster?.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it('passes every check for a good host', async () => {
    const result = await check(['r1']);
    console.log(`$ ferry hosts check r1\n${result.stdout}`);
    expect(result.code, result.stdout + result.stderr).toBe(0);
    const address = cluster.remote('r1').address;
    expect(line(result.stdout, 'ssh config').text).toContain(`r1 is root@${address} port 22`);
    expect(line(result.stdout, 'sshd reachable').text).toContain(`${address}:22 answers`);
    expect(line(result.stdout, 'host key').text).toMatch(/✓ host key +ssh-ed25519 SHA256:\S+, known \(.*known_hosts:1\)/);
    expect(line(result.stdout, 'ssh login').text).toContain('logged in as root');
    expect(line(result.stdout, 'worker').text).toMatch(/✓ worker +ferry-worker on \S+ at 127\.0\.0\.1:3633 on r1: 2 slots/);
    expect(line(result.stdout, 'version').text).toContain(`${FERRY_VERSION}, as here`);
    for (const compiler of CHECKED_COMPILERS) expect(line(result.stdout, `compiler ${compiler}`).mark).toBe('✓');
    expect(result.stdout).not.toContain('✗');
    expect(result.stdout.trim().split('\n').pop()).toBe('1 of 1 hosts ready');
  });

  it('names an unknown host key and the ssh-keyscan line to add it', async () => {
    const result = await check(['r1-unknown'], { FERRY_SSH_CONFIG: unknownKeyConfig });
    console.log(`$ ferry hosts check r1-unknown\n${result.stdout}`);
    expect(result.code).toBe(1);
    const key = line(result.stdout, 'host key');
    expect(key.mark).toBe('✗');
    expect(key.text).toMatch(/the host key ssh-ed25519 SHA256:\S+ is not in .*empty_known_hosts.*StrictHostKeyChecking is yes/);
    expect(key.hint).toContain('Verify the fingerprint');
    expect(key.hint).toContain(`ssh-keyscan -p 22 ${cluster.remote('r1').address} >> ${join(scratch, 'empty_known_hosts')}`);
    expect(line(result.stdout, 'sshd reachable').mark).toBe('✓');
    expect(line(result.stdout, 'ssh login').mark).toBe('-');
  });

  it('says to start sshd when nothing answers on the SSH port', async () => {
    const result = await check(['r4']);
    expect(result.code).toBe(1);
    const sshd = line(result.stdout, 'sshd reachable');
    expect(sshd.mark).toBe('✗');
    expect(sshd.text).toMatch(/cannot connect: .*ECONNREFUSED/);
    expect(sshd.hint).toMatch(/Nothing accepts connections on .*:22: check that sshd runs there/);
    expect(line(result.stdout, 'ssh config').mark).toBe('✓');
    expect(line(result.stdout, 'worker').mark).toBe('-');
  });

  it('says to start the worker when none answers', async () => {
    const result = await check(['r3']);
    console.log(`$ ferry hosts check r3\n${result.stdout}`);
    expect(result.code).toBe(1);
    const worker = line(result.stdout, 'worker');
    expect(worker.mark).toBe('✗');
    expect(worker.text).toMatch(/no worker answered at 127\.0\.0\.1:3633 on r3: cannot open a forwarded channel to 127\.0\.0\.1:3633/);
    expect(worker.hint).toMatch(/Is ferry-worker running on r3\? `ssh r3 systemctl status ferry-worker`/);
    expect(line(result.stdout, 'ssh login').mark).toBe('✓');
    expect(line(result.stdout, 'version').mark).toBe('-');
  });

  it('looks at a worker socket that is not there', async () => {
    const result = await check(['r3,socket=/run/ferry-test/worker.sock']);
    expect(result.code).toBe(1);
    const worker = line(result.stdout, 'worker');
    expect(worker.mark).toBe('✗');
    expect(worker.text).toContain('unix:/run/ferry-test/worker.sock on r3');
    expect(worker.hint).toMatch(/There is no \/run\/ferry-test\/worker.sock on r3\. Is ferry-worker running on r3\?/);
  });

  it('names each compiler the worker lacks and what to install', async () => {
    const result = await check(['r2']);
    expect(result.code).toBe(1);
    expect(line(result.stdout, 'compiler gcc').mark).toBe('✓');
    expect(line(result.stdout, 'compiler g++').mark).toBe('✓');
    const clang = line(result.stdout, 'compiler clang');
    expect(clang.mark).toBe('✗');
    expect(clang.text).toContain('the worker does not serve clang (it serves g++, gcc)');
    expect(clang.hint).toMatch(/^Install clang on r2 \(here: .*clang version/);
    expect(clang.hint).toContain('until then clang jobs compile on this machine');
    expect(line(result.stdout, 'compiler cc').mark).toBe('✗');
  });

  it('checks the configured hosts, through the launcher, and prints JSON', async () => {
    const text = await run(LAUNCHER, ['hosts', 'check'], { env, timeoutMs: 60_000 });
    expect(text.code).toBe(1);
    expect(text.stdout.split('\n').filter((l) => /^r\d$/.test(l))).toEqual(['r1', 'r2', 'r3', 'r4']);
    expect(text.stdout.trim().split('\n').pop()).toBe('1 of 4 hosts ready; fix the lines marked ✗');

    const json = await check(['--json', 'r1', 'r3']);
    expect(json.code).toBe(1);
    const report = JSON.parse(json.stdout);
    expect(report.ok).toBe(false);
    expect(report.version).toBe(FERRY_VERSION);
    expect(report.hosts.map((h: { host: string; ok: boolean }) => [h.host, h.ok])).toEqual([['r1', true], ['r3', false]]);
    const worker = report.hosts[1].checks.find((c: { check: string }) => c.check === 'worker');
    expect(worker).toMatchObject({ status: 'fail', hint: expect.stringContaining('systemctl status ferry-worker') });
  });

  it('refuses a malformed host entry', async () => {
    const result = await check(['r1/zero']);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/FERRY_HOSTS entry "r1\/zero": slots must be a positive whole number/);
  });
});
