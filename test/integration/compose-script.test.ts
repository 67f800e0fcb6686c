/**
 * The container cluster (docker/): there is no Docker engine on the test machines, so
 *  - docker/run-cluster-build.sh, the one command the initiator container runs, runs here against the network-namespace
 *    cluster of test/support/cluster.ts (real sshd, real workers on Unix sockets, real make + gcc), once with the SSH
 *    setup given (FERRY_HOSTS + FERRY_SSH_CONFIG) and once doing its own (key, ssh-keyscan, ssh config);
 *  - docker/compose.yaml is checked statically: services, build contexts, volumes, ports, depends_on, and that every
 *    file it and its Dockerfiles reference exists; `docker-compose config -q` runs too where it is installed.
 */
import { execFileSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { clusterSupport, startCluster, type Cluster } from '../support/cluster';
import { CLI_MAIN, LAUNCHER, ROOT, run, WORKER_MAIN, commandExists } from '../support/processes';

const DOCKER = join(ROOT, 'docker');
const SCRIPT = join(DOCKER, 'run-cluster-build.sh');
const COMPOSE = join(DOCKER, 'compose.yaml');
const SAMPLE = join(ROOT, 'test', 'fixtures', 'sample');
const SAMPLE_SOURCES = (readFileSync(join(SAMPLE, 'Makefile'), 'utf8').match(/src\/[\w-]+\.c/g) ?? []).length;

const support = clusterSupport();

describe.skipIf(!support.ok)('docker/run-cluster-build.sh on the network-namespace cluster', () => {
  let cluster: Cluster;
  let work: string;
  let runtimeDirs: string[] = [];
  const socketOf = (name: string) => join(cluster.remote(name).dir, 'worker.sock');

  /** The script's environment: `ferry` on PATH (the launcher), its own coordinator and statistics. */
  function scriptEnv(extra: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
    const base = mkdtempSync(join(work, 'env-'));
    runtimeDirs.push(join(base, 'run'));
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      PATH: `${dirname(LAUNCHER)}:${process.env.PATH}`,
      FERRY_RUNTIME_DIR: join(base, 'run'),
      FERRY_STATE_DIR: join(base, 'state'),
      FERRY_SAMPLE: SAMPLE,
      TMPDIR: base,
      ...extra,
    };
    // Node would parse the CA bundle at every `ferry stats` start (facts.md); nothing here uses TLS.
    delete env.NODE_EXTRA_CA_CERTS;
    for (const key of ['FERRY_HOSTS', 'FERRY_SSH_CONFIG']) if (!(key in extra)) delete env[key];
    return env;
  }

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'ferry-compose-'));
    // The namespaces share this file system: each remote's worker gets its own socket (in a container it is
    // /run/ferry/worker.sock on every remote).
    cluster = await startCluster({
      remotes: 2,
      worker: {
        command: (remote) => [process.execPath, WORKER_MAIN, '--listen', `unix:${join(remote.dir, 'worker.sock')}`, '--slots', '2', '--allow', 'gcc,g++,cc,c++'],
        readyPattern: /listening on/,
      },
    });
    for (const remote of cluster.remotes) await remote.startWorker();
  });

  afterEach(async () => {
    // The coordinators the script's compiles started.
    for (const dir of runtimeDirs) {
      if (existsSync(join(dir, 'control.sock'))) await run(process.execPath, [CLI_MAIN, 'stop'], { env: { ...process.env, FERRY_RUNTIME_DIR: dir } });
    }
    runtimeDirs = [];
  });

  afterAll(async () => {
    await cluster?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('builds the sample through both remotes with the SSH setup given, every object identical, and prints ferry stats', async () => {
    const env = scriptEnv({
      FERRY_HOSTS: `r1/2,socket=${socketOf('r1')} r2/2,socket=${socketOf('r2')}`,
      ...cluster.env(),
    });
    const result = await run('bash', [SCRIPT], { env, timeoutMs: 300_000 });
    console.log(`compose-script.test.ts: run-cluster-build.sh said:\n${result.stdout}${result.stderr}`);
    expect(result.code, result.stdout + result.stderr).toBe(0);
    expect(result.stdout).toMatch(/^== SSH set up already/m);
    expect(result.stdout).toMatch(new RegExp(`^== OK: ${SAMPLE_SOURCES} objects and ${SAMPLE_SOURCES} dependency files identical to the local build; ${SAMPLE_SOURCES} compiles ran remotely$`, 'm'));
    // `ferry stats` itself, with both hosts.
    expect(result.stdout).toMatch(/^== ferry stats$/m);
    expect(result.stdout).toMatch(/\br1\b/);
    expect(result.stdout).toMatch(/\br2\b/);
    const stats = JSON.parse((await run(process.execPath, [CLI_MAIN, 'stats', '--json'], { env })).stdout);
    expect(stats.jobs.remote).toBe(SAMPLE_SOURCES);
    expect(stats.hosts.r1.jobs).toBeGreaterThan(0);
    expect(stats.hosts.r2.jobs).toBeGreaterThan(0);
  }, 360_000);

  it('sets up SSH itself (key in the shared authorized_keys, ssh-keyscan, ssh config) when FERRY_SSH_CONFIG is not given', async () => {
    const home = mkdtempSync(join(work, 'home-'));
    const addresses = cluster.remotes.map((r) => r.address);
    const env = scriptEnv({
      HOME: home,
      FERRY_REMOTES: addresses.join(' '),
      FERRY_REMOTE_USER: 'root',
      // The cluster's sshd's read their AuthorizedKeysFile from the cluster directory: the compose keys volume.
      FERRY_KEYS_DIR: cluster.dir,
      FERRY_SSH_WAIT: '10',
      // Per-remote sockets (shared file system), so the host list is given; only the SSH setup is the script's.
      FERRY_HOSTS: cluster.remotes.map((r) => `${r.address}/2,socket=${socketOf(r.name)}`).join(' '),
    });
    const result = await run('bash', [SCRIPT], { env, timeoutMs: 300_000 });
    expect(result.code, result.stdout + result.stderr).toBe(0);
    expect(result.stdout).not.toMatch(/SSH set up already/);
    expect(result.stdout).toMatch(new RegExp(`^== OK: ${SAMPLE_SOURCES} objects .* ${SAMPLE_SOURCES} compiles ran remotely$`, 'm'));
    // known_hosts holds exactly the remotes' real host keys, as ssh-keyscan saw them.
    const known = readFileSync(join(home, '.ssh', 'known_hosts'), 'utf8').trim().split('\n').sort();
    expect(known).toEqual(cluster.remotes.map((r) => `${r.address} ${r.hostPublicKey}`).sort());
    const config = readFileSync(join(home, '.ssh', 'config'), 'utf8');
    expect(config).toMatch(/^ {2}StrictHostKeyChecking yes$/m);
    expect(config).toMatch(new RegExp(`^Host ${addresses.join(' ')}$`, 'm'));
    const pub = readFileSync(join(home, '.ssh', 'id_ed25519.pub'), 'utf8').trim();
    expect(readFileSync(join(cluster.dir, 'authorized_keys'), 'utf8').split('\n')).toContain(pub);
  }, 360_000);

  it('fails, after printing ferry stats, when compiles fell back to local', async () => {
    const env = scriptEnv({ FERRY_HOSTS: `r1/2,socket=${join(work, 'no-such-worker.sock')}`, ...cluster.env() });
    const result = await run('bash', [SCRIPT], { env, timeoutMs: 300_000 });
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/^== ferry stats$/m);
    expect(result.stderr).toMatch(new RegExp(`only 0 of ${SAMPLE_SOURCES} compiles went to a remote`));
  }, 360_000);
});

// ---------------------------------------------------------------------------------------------------------------
// compose.yaml, statically

interface Service {
  build?: { context: string; dockerfile: string };
  image?: string;
  hostname?: string;
  volumes?: string[];
  ports?: unknown[];
  expose?: string[];
  depends_on?: Record<string, { condition: string }> | string[];
  environment?: Record<string, string>;
  command?: string[];
  healthcheck?: { test: string[] };
}

describe('docker/compose.yaml', () => {
  // Merge keys (`<<: *remote`) are YAML 1.1, which docker compose reads.
  const compose = parse(readFileSync(COMPOSE, 'utf8'), { merge: true }) as { name?: string; services: Record<string, Service>; volumes: Record<string, unknown> };
  const services = compose.services;
  const contextOf = (s: Service) => resolve(DOCKER, s.build!.context);

  it('has an initiator and two remotes, no top-level name (docker-compose 1.29 rejects it)', () => {
    expect(compose.name).toBeUndefined();
    expect(Object.keys(services).sort()).toEqual(['initiator', 'remote1', 'remote2']);
    expect(Object.keys(compose).filter((k) => !k.startsWith('x-')).sort()).toEqual(['services', 'volumes']);
  });

  it('builds every image from the repository with a Dockerfile that exists', () => {
    const expected: Record<string, string> = { initiator: 'docker/initiator.Dockerfile', remote1: 'docker/remote.Dockerfile', remote2: 'docker/remote.Dockerfile' };
    for (const [name, service] of Object.entries(services)) {
      expect(service.build, name).toBeDefined();
      expect(contextOf(service), name).toBe(ROOT);
      expect(service.build!.dockerfile, name).toBe(expected[name]);
      expect(existsSync(join(contextOf(service), service.build!.dockerfile)), name).toBe(true);
      expect(service.image, `${name}: built, not pulled`).toBeUndefined();
      expect(service.hostname).toBe(name);
    }
  });

  it('publishes no port; the remotes expose only sshd', () => {
    for (const [name, service] of Object.entries(services)) expect(service.ports, name).toBeUndefined();
    for (const name of ['remote1', 'remote2']) {
      expect(services[name].expose).toEqual(['22']);
      expect(services[name].healthcheck?.test.join(' ')).toMatch(/worker\.sock/);
    }
    expect(services.initiator.expose).toBeUndefined();
  });

  it('shares the keys volume (read-only on the remotes) and mounts the sample read-only in the initiator', () => {
    expect(Object.keys(compose.volumes)).toEqual(['ssh-keys']);
    for (const name of ['remote1', 'remote2']) expect(services[name].volumes).toEqual(['ssh-keys:/keys:ro']);
    const volumes = services.initiator.volumes!;
    expect(volumes).toContain('ssh-keys:/keys');
    const bind = volumes.find((v) => v.startsWith('.'))!;
    const [source, target, mode] = bind.split(':');
    expect(resolve(DOCKER, source)).toBe(SAMPLE);
    expect(statSync(resolve(DOCKER, source)).isDirectory()).toBe(true);
    expect(mode).toBe('ro');
    expect(services.initiator.environment?.FERRY_SAMPLE).toBe(target);
    expect(services.initiator.environment?.FERRY_KEYS_DIR).toBe('/keys');
    expect(services.initiator.environment?.FERRY_REMOTES).toBe('remote1 remote2');
  });

  it('starts the initiator after both remotes are healthy, running run-cluster-build.sh', () => {
    expect(services.initiator.depends_on).toEqual({ remote1: { condition: 'service_healthy' }, remote2: { condition: 'service_healthy' } });
    expect(services.initiator.command).toEqual(['run-cluster-build.sh']);
    for (const name of ['remote1', 'remote2']) expect(services[name].depends_on).toBeUndefined();
  });

  it('references only files that exist: COPY sources, entry points, per-Dockerfile ignore files', () => {
    for (const dockerfile of ['docker/remote.Dockerfile', 'docker/initiator.Dockerfile']) {
      const text = readFileSync(join(ROOT, dockerfile), 'utf8');
      const ignore = readFileSync(join(ROOT, `${dockerfile}.dockerignore`), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
      // What the images need must not be ignored.
      for (const needed of ['docker', 'package.json', 'package-lock.json', 'worker', 'proto', 'packaging', 'cli', 'coordinator']) expect(ignore, needed).not.toContain(needed);
      for (const line of text.split('\n').filter((l) => /^COPY\s/.test(l) && !/--from=/.test(l))) {
        const sources = line.trim().split(/\s+/).slice(1, -1);
        for (const source of sources) expect(existsSync(join(ROOT, source)), `${dockerfile}: ${line}`).toBe(true);
      }
    }
    for (const script of ['docker/run-cluster-build.sh', 'docker/remote-entrypoint.sh']) {
      expect(() => accessSync(join(ROOT, script), constants.X_OK), `${script} is executable`).not.toThrow();
      execFileSync('bash', ['-n', join(ROOT, script)]);
    }
    expect(readFileSync(join(ROOT, 'docker/remote.Dockerfile'), 'utf8')).toMatch(/^ENTRYPOINT \["\/usr\/local\/bin\/remote-entrypoint\.sh"\]$/m);
    expect(readFileSync(join(ROOT, 'docker/initiator.Dockerfile'), 'utf8')).toMatch(/^COPY docker\/run-cluster-build\.sh \/usr\/local\/bin\/run-cluster-build\.sh$/m);
    // The remote image installs the worker from the .deb that `npm run package` makes.
    expect(readFileSync(join(ROOT, 'docker/remote.Dockerfile'), 'utf8')).toMatch(/npm run package/);
    expect(readFileSync(join(ROOT, 'package.json'), 'utf8')).toMatch(/"package": "node packaging\/build-deb\.mjs"/);
  });

  it('passes `docker-compose config -q` where Debian\'s docker-compose is installed', async (context) => {
    if (!commandExists('docker-compose')) {
      console.log('compose-script.test.ts: docker-compose config -q skipped: docker-compose is not installed (Debian package: docker-compose)');
      context.skip();
    }
    const result = await run('docker-compose', ['-f', COMPOSE, 'config', '-q'], { cwd: DOCKER, timeoutMs: 60_000 });
    expect(result.code, result.stderr).toBe(0);
  });
});
