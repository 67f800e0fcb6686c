/**
 * The worker as a Debian package: `npm run package` builds the .deb; its metadata and unit are checked; then it is
 * installed with apt-get on a clean Debian 12 (a debootstrap'd minbase chroot, which pulls Debian's own nodejs 18),
 * the installed worker is started with the installed configuration as the `ferry` user, serves a real compile
 * through its Unix socket to the project's client code outside the chroot, and `apt-get purge` removes it cleanly.
 *
 * The minbase tree is built once (bounded) into /var/cache/ferry-test/bookworm-minbase and reused; every run works
 * on a copy. Packages apt downloads are kept in /var/cache/ferry-test/apt-archives, so a second run needs no network.
 * Every command inside the chroot runs in a private mount namespace (`unshare --mount`) that mounts /proc and /dev
 * for it: the mounts disappear with the command, so nothing can stay mounted over the host's /dev when the copy is
 * removed (afterAll checks it anyway).
 */
import { execFileSync, spawn } from 'node:child_process';
import { cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compileOnce } from '../support/jobs';
import { loadWorkerProto } from '../../proto/load';
import type { WorkerClient } from '../../proto/generated/ferry/v1/Worker';
import type { WorkerDescription__Output } from '../../proto/generated/ferry/v1/WorkerDescription';
import { clusterSupport, startCluster, type Cluster } from '../support/cluster';
import { CLI_MAIN, LAUNCHER, ROOT, run, type RunResult, commandExists } from '../support/processes';

const CACHE = '/var/cache/ferry-test';
const BASE = join(CACHE, 'bookworm-minbase');
const ARCHIVES = join(CACHE, 'apt-archives');
/** debootstrap's own download cache, used if the base tree is ever built again. */
const DEBOOTSTRAP_DEBS = join(CACHE, 'debootstrap-debs');
const MIRROR = 'http://deb.debian.org/debian';
/** Marks a finished base tree: debootstrap and apt-get update completed. */
const COMPLETE = '.ferry-base-complete';
const DEBOOTSTRAP_TIMEOUT_MS = 20 * 60_000;
const APT_TIMEOUT_MS = 15 * 60_000;
/** Another run building the base or using the archive cache: wait for it this long, then fail. */
const LOCK_WAIT_S = 1500;
const CHROOT_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C', HOME: '/root', DEBIAN_FRONTEND: 'noninteractive' };

const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
const arch = commandExists('dpkg') ? execFileSync('dpkg', ['--print-architecture'], { encoding: 'utf8' }).trim() : '';
const DEB = join(ROOT, 'dist', `ferry-worker_${pkg.version.replace('-', '~')}_${arch}.deb`);

function support(): { ok: boolean; why?: string } {
  if (process.platform !== 'linux') return { ok: false, why: 'not Linux' };
  if (process.getuid?.() !== 0) return { ok: false, why: 'not root (dpkg, chroot and mounts need it)' };
  for (const tool of ['dpkg-deb', 'apt-get', 'chroot', 'unshare', 'flock']) {
    if (!commandExists(tool)) return { ok: false, why: `${tool} is missing` };
  }
  return { ok: true };
}

const supported = support();
if (!supported.ok) {
  if (process.env.CI) throw new Error(`package tests cannot run on this CI machine: ${supported.why}`);
  console.log(`package.test.ts skipped: ${supported.why}`);
}

async function mustRun(command: string, args: string[], options: Parameters<typeof run>[2] = {}): Promise<RunResult> {
  const result = await run(command, args, options);
  if (result.code !== 0) throw new Error(`${command} ${args.join(' ')} exited ${result.code}:\n${result.stdout}\n${result.stderr}`);
  return result;
}

/**
 * Runs `cmd` chrooted into `root`, in a private mount namespace with /proc and /dev (and, for apt, the archive
 * cache) mounted; they vanish when the command ends. `prefix` runs in that shell before the chroot (a umask).
 */
function inChroot(root: string, cmd: string[], options: { archives?: boolean; userspec?: string; prefix?: string } = {}): [string, string[]] {
  const script = [
    'set -e',
    'r=$1; shift',
    'mount -t proc proc "$r/proc"',
    'mount --rbind /dev "$r/dev"',
    options.archives ? `mount --bind ${ARCHIVES} "$r/var/cache/apt/archives"` : ':',
    options.prefix ?? ':',
    `exec chroot ${options.userspec ? `--userspec=${options.userspec} ` : ''}"$r" "$@"`,
  ].join('\n');
  return ['unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script, 'sh', root, ...cmd]];
}

function chrootRun(root: string, cmd: string[], options: { archives?: boolean; timeoutMs?: number } = {}): Promise<RunResult> {
  const [file, args] = inChroot(root, cmd, options);
  return run(file, args, { env: CHROOT_ENV, timeoutMs: options.timeoutMs ?? 60_000 });
}

async function mustChroot(root: string, cmd: string[], options: { archives?: boolean; timeoutMs?: number } = {}): Promise<RunResult> {
  const result = await chrootRun(root, cmd, options);
  if (result.code !== 0) throw new Error(`in the chroot: ${cmd.join(' ')} exited ${result.code}:\n${result.stdout}\n${result.stderr}`);
  return result;
}

/** Mount points at or below `dir`, deepest first. */
function mountsBelow(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((mnt): mnt is string => Boolean(mnt) && (mnt === dir || mnt.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
}

function elapsed(since: number): string {
  return `${((Date.now() - since) / 1000).toFixed(1)} s`;
}

/** debootstrap, installed with apt-get when missing (the brief's machines have apt and Debian's mirror). */
async function ensureDebootstrap(): Promise<void> {
  if (commandExists('debootstrap')) return;
  console.log('package.test.ts: installing debootstrap with apt-get');
  await mustRun('apt-get', ['update', '-qq'], { timeoutMs: APT_TIMEOUT_MS });
  await mustRun('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'debootstrap'], {
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    timeoutMs: APT_TIMEOUT_MS,
  });
}

/**
 * The cached minbase tree: built once under a lock (parallel runs wait rather than build twice), into a temporary
 * name that is renamed only when complete, so an interrupted build is never mistaken for a finished one.
 */
async function ensureBase(): Promise<void> {
  mkdirSync(join(ARCHIVES, 'partial'), { recursive: true });
  mkdirSync(DEBOOTSTRAP_DEBS, { recursive: true });
  if (existsSync(join(BASE, COMPLETE))) return;
  const started = Date.now();
  const partial = `${BASE}.partial`;
  const sources = [
    `deb ${MIRROR} bookworm main`,
    `deb ${MIRROR} bookworm-updates main`,
    'deb http://deb.debian.org/debian-security bookworm-security main',
  ].join('\\n');
  const script = [
    'set -e',
    `[ -e "${BASE}/${COMPLETE}" ] && exit 0`,
    `rm -rf --one-file-system "${partial}"`,
    `timeout ${DEBOOTSTRAP_TIMEOUT_MS / 1000 - 60} debootstrap --variant=minbase --cache-dir=${DEBOOTSTRAP_DEBS} bookworm "${partial}" ${MIRROR}`,
    // What a Debian 12 installation uses: the point release, its updates and security.
    `printf '${sources}\\n' > "${partial}/etc/apt/sources.list"`,
    `cp /etc/resolv.conf "${partial}/etc/resolv.conf"`,
    `unshare --mount --propagation private sh -c 'mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && exec chroot "$0" apt-get update -qq' "${partial}"`,
    `touch "${partial}/${COMPLETE}"`,
    `rm -rf --one-file-system "${BASE}"`,
    `mv "${partial}" "${BASE}"`,
  ].join('\n');
  await mustRun('flock', ['-w', String(LOCK_WAIT_S), join(CACHE, 'base.lock'), 'sh', '-c', script], {
    env: { ...process.env, ...CHROOT_ENV },
    timeoutMs: DEBOOTSTRAP_TIMEOUT_MS,
  });
  console.log(`package.test.ts: Debian 12 minbase ready in ${BASE} after ${elapsed(started)}`);
}

/** A fresh copy of the cached Debian 12 tree at `root`, ready for apt-get. */
async function prepareRoot(root: string): Promise<void> {
  // cp -a keeps owners, modes, device nodes and hard links of the base tree.
  await mustRun('cp', ['-a', BASE, root], { timeoutMs: 300_000 });
  cpSync('/etc/resolv.conf', join(root, 'etc/resolv.conf'));
  // Debian's convention for chroots (Docker's Debian images have it too): maintainer scripts start no daemons.
  writeFileSync(join(root, 'usr/sbin/policy-rc.d'), '#!/bin/sh\nexit 101\n', { mode: 0o755 });
}

/** apt-get in the chroot with the shared archive cache; the lock keeps two runs from using that cache at once. */
function aptInChroot(root: string, cmd: string[]): Promise<RunResult> {
  const [file, args] = inChroot(root, cmd, { archives: true });
  return run('flock', ['-w', String(LOCK_WAIT_S), join(CACHE, 'apt.lock'), file, ...args], { env: CHROOT_ENV, timeoutMs: APT_TIMEOUT_MS });
}

describe.skipIf(!supported.ok)('the ferry-worker Debian package', () => {
  let work: string;
  let extracted: string;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'ferry-pkg-'));
    const started = Date.now();
    const built = await run('npm', ['run', '--silent', 'package'], { cwd: ROOT, timeoutMs: 300_000 });
    expect(built.code, built.stdout + built.stderr).toBe(0);
    console.log(`package.test.ts: npm run package: ${built.stdout.trim()} in ${elapsed(started)}`);
    extracted = join(work, 'extracted');
    await mustRun('dpkg-deb', ['-x', DEB, extracted]);
  }, 360_000);

  afterAll(() => {
    // Nothing is mounted below `work` (mounts live in private namespaces); never remove a tree that has a mount.
    if (work && mountsBelow(work).length === 0) rmSync(work, { recursive: true, force: true });
    else if (work) throw new Error(`left ${work} in place: mounted below it: ${mountsBelow(work).join(', ')}`);
  });

  it('has the right control fields, conffile, maintainer scripts, unit and entry point', async () => {
    const field = async (name: string) => (await mustRun('dpkg-deb', ['-f', DEB, name])).stdout.trim();
    expect(await field('Package')).toBe('ferry-worker');
    expect(await field('Version')).toBe(pkg.version.replace('-', '~'));
    expect(await field('Architecture')).toBe(arch);
    expect(await field('Depends')).toMatch(/(^|, )nodejs \(>= 18\)(,|$)/);
    expect(await field('Depends')).toMatch(/(^|, )adduser(,|$)/);
    expect(await field('Recommends')).toBe('gcc | clang');

    const info = (await mustRun('dpkg-deb', ['--info', DEB])).stdout;
    for (const member of ['control', 'conffiles', 'postinst', 'prerm', 'postrm', 'md5sums']) expect(info).toMatch(new RegExp(`\\s${member}\\s`));
    expect((await mustRun('dpkg-deb', ['--info', DEB, 'conffiles'])).stdout.trim()).toBe('/etc/ferry/worker.conf');

    const contents = (await mustRun('dpkg-deb', ['--contents', DEB])).stdout;
    const entries = new Map(
      contents.trim().split('\n').map((line) => {
        const [mode, owner, , , , path] = line.split(/\s+/);
        return [path.replace(/^\./, '').replace(/\/$/, '') || '/', { mode, owner }];
      }),
    );
    for (const [path, mode] of [
      ['/usr/bin/ferry-worker', '-rwxr-xr-x'],
      ['/etc/ferry/worker.conf', '-rw-r--r--'],
      ['/lib/systemd/system/ferry-worker.service', '-rw-r--r--'],
      ['/usr/lib/ferry-worker/dist/worker/main.js', '-rw-r--r--'],
      ['/usr/lib/ferry-worker/dist/bin/ferry-worker-exec', '-rwxr-xr-x'],
      ['/usr/lib/ferry-worker/dist/lib/ferry-fork-server.so', '-rw-r--r--'],
      ['/usr/lib/ferry-worker/proto/ferry.proto', '-rw-r--r--'],
      ['/usr/lib/ferry-worker/package.json', '-rw-r--r--'],
      ['/usr/share/doc/ferry-worker/copyright', '-rw-r--r--'],
    ]) {
      expect(entries.get(path), path).toEqual({ mode, owner: 'root/root' });
    }
    // --root-owner-group: nothing in the package belongs to the builder.
    expect([...entries.values()].filter((e) => e.owner !== 'root/root')).toEqual([]);
    // The worker's runtime packages only: nothing of the initiator's (ssh2) or of the build (typescript, vitest).
    const modules = new Set([...entries.keys()].map((p) => /^\/usr\/lib\/ferry-worker\/node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(p)?.[1]).filter(Boolean));
    for (const needed of ['@grpc/grpc-js', '@grpc/proto-loader', 'grpc-health-check', 'lz4-napi', 'commander', 'protobufjs', 'long']) {
      expect(modules.has(needed), needed).toBe(true);
    }
    for (const unwanted of ['ssh2', 'typescript', 'vitest', '@types/node', 'cpu-features']) expect(modules.has(unwanted), unwanted).toBe(false);
    const nodeArch = arch === 'amd64' ? 'x64' : arch;
    expect([...entries.keys()].some((p) => p.endsWith(`.linux-${nodeArch}-gnu.node`)), 'lz4-napi binary').toBe(true);
    expect([...entries.keys()].some((p) => p.startsWith('/usr/lib/ferry-worker/dist/coordinator'))).toBe(false);

    const unit = readFileSync(join(extracted, 'lib/systemd/system/ferry-worker.service'), 'utf8');
    for (const line of [
      'ExecStart=/usr/bin/ferry-worker --config /etc/ferry/worker.conf', 'User=ferry', 'Group=ferry', 'RuntimeDirectory=ferry',
      'UMask=0007', 'Restart=on-failure', 'NoNewPrivileges=yes', 'ProtectSystem=strict', 'ProtectHome=yes', 'PrivateTmp=yes',
      'PrivateDevices=yes', 'ProtectKernelTunables=yes', 'ProtectKernelModules=yes', 'ProtectControlGroups=yes',
      'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6', 'RestrictNamespaces=yes', 'LockPersonality=yes',
      'SystemCallArchitectures=native', 'WantedBy=multi-user.target',
    ]) {
      expect(unit.split('\n'), line).toContain(line);
    }
    // V8's JIT needs W+X memory: the worker would not start.
    expect(unit).not.toMatch(/^MemoryDenyWriteExecute=/m);
    const conf = readFileSync(join(extracted, 'etc/ferry/worker.conf'), 'utf8');
    expect(conf).toMatch(/^\s*listen\s*=\s*unix:\/run\/ferry\/worker\.sock\s*$/m);
  });

  it('has a unit that systemd-analyze verify accepts', async (context) => {
    if (!commandExists('systemd-analyze')) {
      // Only this check needs systemd; CI can install it (apt-get install systemd).
      console.log('package.test.ts: systemd-analyze verify skipped: systemd-analyze is not installed (Debian package: systemd)');
      context.skip();
    }
    // verify checks that ExecStart's program is executable on this machine: the package's own /usr/bin is laid over
    // the host's with an overlay, in a private mount namespace, so nothing is installed on the host.
    const unit = join(extracted, 'lib/systemd/system/ferry-worker.service');
    const script = `mount -t overlay overlay -o lowerdir="$1/usr/bin:/usr/bin" /usr/bin && systemd-analyze verify "$2" && systemd-analyze security --offline=true --threshold=5 "$2" | tail -1`;
    const result = await run('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script, 'sh', extracted, unit]);
    expect(result.code, result.stdout + result.stderr).toBe(0);
    expect(result.stderr).toBe('');
    console.log(`package.test.ts: systemd-analyze security: ${result.stdout.trim()}`);
  });

  describe('installed with apt-get on a clean Debian 12 (debootstrap minbase chroot)', () => {
    let chroot: string;
    let worker: ReturnType<typeof spawn> | undefined;
    let workerExited: Promise<number | null> | undefined;
    let workerOutput = '';
    let client: WorkerClient | undefined;
    const timings: string[] = [];

    beforeAll(async () => {
      let t = Date.now();
      await ensureDebootstrap();
      await ensureBase();
      timings.push(`base ${elapsed(t)}`);
      t = Date.now();
      chroot = join(work, 'root');
      await prepareRoot(chroot);
      timings.push(`copy ${elapsed(t)}`);
      cpSync(DEB, join(chroot, 'tmp', 'ferry-worker.deb'));
    }, DEBOOTSTRAP_TIMEOUT_MS + 10 * 60_000);

    afterAll(async () => {
      client?.close();
      if (worker && worker.exitCode === null && worker.signalCode === null) {
        worker.kill('SIGKILL');
        await workerExited;
      }
      if (chroot) {
        // Private namespaces mean nothing should be mounted here; unmount anything that is, before the copy goes.
        for (const mnt of mountsBelow(chroot)) execFileSync('umount', ['-l', mnt], { timeout: 30_000 });
      }
      console.log(`package.test.ts: chroot timings: ${timings.join(', ')}`);
    });

    it('installs from the .deb, pulling Debian\'s nodejs and gcc; creates the ferry user and enables the unit', async () => {
      const t = Date.now();
      const install = () => aptInChroot(chroot, ['apt-get', 'install', '-y', '-q', '/tmp/ferry-worker.deb', 'gcc']);
      let installed = await install();
      if (installed.code !== 0 && /404|Unable to fetch|Failed to fetch/.test(installed.stderr + installed.stdout)) {
        // The cached package lists are older than the mirror: refresh them once and retry.
        await mustChroot(chroot, ['apt-get', 'update', '-qq'], { timeoutMs: APT_TIMEOUT_MS });
        installed = await install();
      }
      expect(installed.code, installed.stdout + installed.stderr).toBe(0);
      timings.push(`apt-get install ${elapsed(t)}`);

      const node = (await mustChroot(chroot, ['node', '--version'])).stdout.trim();
      const nodePackage = (await mustChroot(chroot, ['dpkg-query', '-W', '-f=${Version}', 'nodejs'])).stdout.trim();
      console.log(`package.test.ts: the chroot's node ${node} (Debian nodejs ${nodePackage})`);
      expect(node).toMatch(/^v18\./);
      expect((await mustChroot(chroot, ['dpkg-query', '-W', '-f=${Status}', 'ferry-worker'])).stdout).toBe('install ok installed');
      expect((await mustChroot(chroot, ['dpkg-query', '-W', '-f=${Conffiles}', 'ferry-worker'])).stdout).toMatch(/^ \/etc\/ferry\/worker\.conf [0-9a-f]{32}$/m);

      const passwd = readFileSync(join(chroot, 'etc/passwd'), 'utf8');
      const user = /^ferry:x:(\d+):(\d+):[^:\n]*:([^:\n]*):([^:\n]*)$/m.exec(passwd);
      expect(user, passwd).not.toBeNull();
      expect(Number(user![1])).toBeLessThan(1000); // a system user
      expect(user![3]).toBe('/nonexistent');
      expect(user![4]).toBe('/usr/sbin/nologin');
      expect(readFileSync(join(chroot, 'etc/group'), 'utf8')).toMatch(new RegExp(`^ferry:x:${user![2]}:`, 'm'));
      expect(existsSync(join(chroot, 'nonexistent'))).toBe(false);
      // deb-systemd-helper (init-system-helpers) enables the unit even where systemd is not running.
      if (existsSync(join(chroot, 'usr/bin/deb-systemd-helper'))) {
        const wants = join(chroot, 'etc/systemd/system/multi-user.target.wants/ferry-worker.service');
        expect(readlinkSync(wants)).toBe('/lib/systemd/system/ferry-worker.service');
      } else {
        console.log('package.test.ts: no deb-systemd-helper in the chroot: the unit is installed, not enabled');
      }
    }, APT_TIMEOUT_MS + 60_000);

    it('starts as the ferry user with the installed config and compiles for a client outside the chroot', async () => {
      expect(existsSync(join(chroot, 'usr/bin/ferry-worker')), 'the install test ran first').toBe(true);
      // What systemd's RuntimeDirectory=ferry with User=ferry and RuntimeDirectoryMode=0750 would create.
      await mustChroot(chroot, ['install', '-d', '-o', 'ferry', '-g', 'ferry', '-m', '0750', '/run/ferry']);
      const [file, args] = inChroot(chroot, ['/usr/bin/ferry-worker', '--config', '/etc/ferry/worker.conf'], {
        userspec: 'ferry:ferry',
        prefix: 'umask 0007', // the unit's UMask=0007
      });
      worker = spawn(file, args, { env: { PATH: CHROOT_ENV.PATH, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
      workerExited = new Promise((resolve) => worker!.once('exit', (code) => resolve(code)));
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`the installed worker did not start within 30 s:\n${workerOutput}`)), 30_000);
        const onData = (data: Buffer) => {
          workerOutput += data.toString();
          if (/listening on/.test(workerOutput)) {
            clearTimeout(timer);
            resolve();
          }
        };
        worker!.stdout!.on('data', onData);
        worker!.stderr!.on('data', onData);
        void workerExited!.then((code) => {
          clearTimeout(timer);
          reject(new Error(`the installed worker exited (${code}) before it listened:\n${workerOutput}`));
        });
      });
      expect(workerOutput).toMatch(/listening on unix:\/run\/ferry\/worker\.sock .*config: \/etc\/ferry\/worker\.conf/);

      // It runs as ferry (not root), and its socket is reachable by the ferry group only.
      const passwd = /^ferry:x:(\d+):(\d+):/m.exec(readFileSync(join(chroot, 'etc/passwd'), 'utf8'))!;
      const uid = Number(passwd[1]);
      const gid = Number(passwd[2]);
      const status = readFileSync(`/proc/${worker.pid}/status`, 'utf8');
      expect(/^Uid:\s+(\d+)/m.exec(status)![1]).toBe(String(uid));
      expect(/^Gid:\s+(\d+)/m.exec(status)![1]).toBe(String(gid));
      const socketPath = join(chroot, 'run/ferry/worker.sock');
      const socket = lstatSync(socketPath);
      expect(socket.isSocket()).toBe(true);
      expect(socket.mode & 0o777).toBe(0o660);
      expect(socket.gid).toBe(gid);
      expect(statSync(join(chroot, 'run/ferry')).mode & 0o777).toBe(0o750);

      const proto = loadWorkerProto();
      client = new proto.ferry.v1.Worker(`unix://${socketPath}`, grpc.credentials.createInsecure());
      const description = await new Promise<WorkerDescription__Output>((resolve, reject) =>
        client!.Describe({}, { deadline: Date.now() + 20_000 }, (err, reply) => (err ? reject(err) : resolve(reply!))),
      );
      expect(description.version).toBe(pkg.version);
      const chrootGcc = (await mustChroot(chroot, ['gcc', '--version'])).stdout.split('\n')[0];
      const served = description.compilers.find((c) => c.name === 'gcc');
      expect(served?.version).toBe(chrootGcc);

      // The same compile Ferry sends: preprocessed with -fdirectives-only where make runs, compiled in the chroot.
      const source = '#include <stdio.h>\n#include <string.h>\n#define GREETING "hello from the package"\nint main(void) { return (int)strlen(GREETING) - puts(GREETING); }\n';
      const hostGcc = execFileSync('gcc', ['--version'], { encoding: 'utf8' }).split('\n')[0];
      let preprocessed: Buffer;
      let expected: Buffer;
      if (hostGcc === chrootGcc) {
        // Same compiler: the normal case, the initiator (this machine) preprocesses and compares with its own compile.
        const dir = mkdtempSync(join(work, 'src-'));
        writeFileSync(join(dir, 'hello.c'), source);
        preprocessed = execFileSync('gcc', ['-O2', '-E', '-fdirectives-only', join(dir, 'hello.c')]);
        execFileSync('gcc', ['-O2', '-c', join(dir, 'hello.c'), '-o', join(dir, 'local.o')]);
        expected = readFileSync(join(dir, 'local.o'));
      } else {
        console.log(`package.test.ts: host gcc "${hostGcc}" differs from the chroot's "${chrootGcc}": comparing with the chroot's own compile`);
        writeFileSync(join(chroot, 'tmp/hello.c'), source);
        preprocessed = Buffer.from((await mustChroot(chroot, ['gcc', '-O2', '-E', '-fdirectives-only', '/tmp/hello.c'])).stdout);
        await mustChroot(chroot, ['gcc', '-O2', '-c', '/tmp/hello.c', '-o', '/tmp/local.o']);
        expected = readFileSync(join(chroot, 'tmp/local.o'));
      }
      const outcome = await compileOnce(
        client,
        {
          jobId: 'package-test',
          compiler: 'gcc',
          compilerVersion: chrootGcc,
          args: ['-O2', '-c', '-fdirectives-only'],
          language: 'C',
          outputs: [{ kind: 'OBJECT', name: 'hello.o' }],
          sourceSize: preprocessed.length,
          sourceName: 'hello.c',
        },
        preprocessed,
        { deadlineMs: 60_000 },
      );
      expect(outcome.result.exitCode, outcome.result.stderr.toString()).toBe(0);
      expect(outcome.outputs[0].length).toBeGreaterThan(0);
      expect(outcome.outputs[0].equals(expected), 'the object differs from a local compile').toBe(true);
      // The packaged exec helper started the compiler: it runs as the worker's child, and the worker did not fall back.
      expect(workerOutput).not.toMatch(/ferry-worker-exec .*cannot be used/);
      expect(workerOutput).not.toMatch(/no fork servers/);
      const children = readFileSync(`/proc/${worker.pid}/task/${worker.pid}/children`, 'utf8').trim().split(' ').filter(Boolean);
      expect(children.map((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0])).toContain('/usr/lib/ferry-worker/dist/bin/ferry-worker-exec');

      // A clean stop on SIGTERM (what systemctl stop sends), leaving no socket behind.
      client.close();
      client = undefined;
      worker.kill('SIGTERM');
      expect(await Promise.race([workerExited, new Promise((r) => setTimeout(() => r('timeout'), 15_000))])).toBe(0);
      expect(existsSync(socketPath)).toBe(false);
    }, 120_000);

    it('apt-get purge removes the files, the ferry user and group, and /etc/ferry', async () => {
      expect(existsSync(join(chroot, 'usr/bin/ferry-worker')), 'the install test ran first').toBe(true);
      // Even an edited conffile goes on purge.
      writeFileSync(join(chroot, 'etc/ferry/worker.conf'), '# edited by the admin\n', { flag: 'a' });
      const t = Date.now();
      await mustChroot(chroot, ['apt-get', 'purge', '-y', '-q', 'ferry-worker'], { timeoutMs: APT_TIMEOUT_MS });
      timings.push(`apt-get purge ${elapsed(t)}`);
      expect((await chrootRun(chroot, ['dpkg-query', '-W', '-f=${Status}', 'ferry-worker'])).stdout).not.toMatch(/installed/);
      expect(readFileSync(join(chroot, 'etc/passwd'), 'utf8')).not.toMatch(/^ferry:/m);
      expect(readFileSync(join(chroot, 'etc/group'), 'utf8')).not.toMatch(/^ferry:/m);
      for (const path of ['etc/ferry', 'usr/lib/ferry-worker', 'usr/bin/ferry-worker', 'lib/systemd/system/ferry-worker.service', 'run/ferry', 'usr/share/doc/ferry-worker']) {
        expect(existsSync(join(chroot, path)), path).toBe(false);
      }
      const wants = join(chroot, 'etc/systemd/system/multi-user.target.wants');
      expect(existsSync(wants) ? readdirSync(wants) : []).not.toContain('ferry-worker.service');
    }, APT_TIMEOUT_MS + 60_000);
  });

  /**
   * docker/remote.Dockerfile's final stage, without Docker: its COPY and RUN steps applied to a fresh copy of the
   * Debian 12 tree (what `FROM debian:bookworm` starts from), its ENTRYPOINT run in a network namespace of the test
   * cluster (whose own sshd is stopped), and docker/run-cluster-build.sh run here as the initiator would, doing its
   * own SSH setup: key into the remote's /keys, ssh-keyscan, ssh as `builder` to the worker's socket.
   */
  describe.skipIf(!clusterSupport().ok)('docker/remote.Dockerfile\'s final stage, emulated in a chroot, serving run-cluster-build.sh', () => {
    let image: string;
    let cluster: Cluster | undefined;
    let runtimeDir: string | undefined;
    let entrypoint: string[] = [];

    /** Instructions after the last FROM, continuation lines joined, comments dropped. */
    function finalStage(dockerfile: string): Array<{ instruction: string; args: string }> {
      const steps: Array<{ instruction: string; args: string }> = [];
      let pending = '';
      for (const line of readFileSync(dockerfile, 'utf8').split('\n')) {
        if (/^\s*#/.test(line)) continue;
        pending += line.replace(/\\$/, ' ');
        if (line.endsWith('\\')) continue;
        const m = /^\s*(\w+)\s+(.*)$/.exec(pending);
        if (m) steps.push({ instruction: m[1].toUpperCase(), args: m[2].trim() });
        pending = '';
      }
      const from = steps.map((x) => x.instruction).lastIndexOf('FROM');
      expect(steps[from].args).toBe('debian:bookworm');
      return steps.slice(from + 1);
    }

    beforeAll(async () => {
      await ensureDebootstrap();
      await ensureBase();
      image = join(work, 'remote-image');
      await prepareRoot(image);
      for (const { instruction, args } of finalStage(join(ROOT, 'docker', 'remote.Dockerfile'))) {
        const words = args.split(/\s+/);
        if (instruction === 'COPY' && words[0].startsWith('--from=')) {
          // The first stage's product is the .deb this suite built.
          const [source, target] = words.slice(1);
          expect(basename(DEB)).toMatch(new RegExp(`^${basename(source).replaceAll('.', '\\.').replace('*', '.+')}$`));
          cpSync(DEB, join(image, target, basename(DEB)));
        } else if (instruction === 'COPY') {
          const target = words[words.length - 1];
          for (const source of words.slice(0, -1)) {
            cpSync(join(ROOT, source), target.endsWith('/') ? join(image, target, basename(source)) : join(image, target), { recursive: true });
          }
        } else if (instruction === 'RUN') {
          // Shell form, as Docker runs it: /bin/sh -c.
          const result = await aptInChroot(image, ['/bin/sh', '-c', args]);
          expect(result.code, `RUN ${args}\n${result.stdout}\n${result.stderr}`).toBe(0);
        } else if (instruction === 'EXPOSE') {
          expect(args).toBe('22');
        } else if (instruction === 'ENTRYPOINT') {
          entrypoint = JSON.parse(args) as string[];
        } else {
          throw new Error(`the emulation does not know the Dockerfile instruction ${instruction}: teach it`);
        }
      }
      expect(entrypoint.length).toBeGreaterThan(0);
      // The compose file's keys volume.
      mkdirSync(join(image, 'keys'));
    }, DEBOOTSTRAP_TIMEOUT_MS + 10 * 60_000);

    afterAll(async () => {
      if (runtimeDir && existsSync(join(runtimeDir, 'control.sock'))) {
        await run(process.execPath, [CLI_MAIN, 'stop'], { env: { ...process.env, FERRY_RUNTIME_DIR: runtimeDir } });
      }
      // Stops the entry point (it stops the worker and sshd), then whatever is left in the namespace.
      await cluster?.stop();
    });

    it('starts the worker and sshd like a container; the initiator script builds the sample through it, identical objects', async () => {
      const imageGcc = (await mustChroot(image, ['gcc', '--version'])).stdout.split('\n')[0];
      const hostGcc = execFileSync('gcc', ['--version'], { encoding: 'utf8' }).split('\n')[0];
      if (imageGcc !== hostGcc) {
        // Ferry would rightly keep every job local, and the script would fail for that reason alone.
        console.log(`package.test.ts: remote image emulation not run: its gcc "${imageGcc}" is not this machine's "${hostGcc}"`);
        return;
      }
      cluster = await startCluster({ remotes: 1 });
      const remote = cluster.remote('r1');
      await remote.stopSshd();
      // A container's environment, not this process's; /proc and /dev as a container has them.
      const [file, args] = inChroot(image, entrypoint);
      await remote.spawn(['env', '-i', 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', file, ...args], {
        readyPattern: /listening on unix:\/run\/ferry\/worker\.sock/,
        readyTimeoutMs: 30_000,
      });

      const base = mkdtempSync(join(work, 'initiator-'));
      runtimeDir = join(base, 'run');
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        HOME: join(base, 'home'),
        PATH: `${join(LAUNCHER, '..')}:${process.env.PATH}`,
        FERRY_RUNTIME_DIR: runtimeDir,
        FERRY_STATE_DIR: join(base, 'state'),
        FERRY_SAMPLE: join(ROOT, 'test', 'fixtures', 'sample'),
        FERRY_REMOTES: remote.address,
        FERRY_REMOTE_USER: 'builder',
        FERRY_KEYS_DIR: join(image, 'keys'),
        FERRY_SSH_WAIT: '30',
        TMPDIR: base,
      };
      for (const key of ['FERRY_HOSTS', 'FERRY_SSH_CONFIG', 'NODE_EXTRA_CA_CERTS']) delete env[key];
      const result = await run('bash', [join(ROOT, 'docker', 'run-cluster-build.sh')], { env, timeoutMs: 300_000 });
      expect(result.code, result.stdout + result.stderr).toBe(0);
      expect(result.stdout).toMatch(new RegExp(`^== FERRY_HOSTS=${remote.address.replaceAll('.', '\\.')},socket=/run/ferry/worker\\.sock$`, 'm'));
      expect(result.stdout).toMatch(/^== OK: (\d+) objects .* \1 compiles ran remotely$/m);
    }, 360_000);
  });
});
