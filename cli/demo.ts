/**
 * `ferry demo`: Ferry's whole path on one machine. It starts workers here (reached through a real
 * sshd on loopback when one is installed, else over their Unix sockets), builds the sample project
 * with make through the launcher and a fresh coordinator, builds it again locally, and checks that
 * every object and dependency file is identical.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Control } from './control';
import { freePort, SSHD, startLoopbackSshd } from './loopback-sshd';

const ROOT = join(__dirname, '..', '..');
const SAMPLE = join(ROOT, 'test', 'fixtures', 'sample');
const LAUNCHER = join(ROOT, 'dist', 'bin', 'ferry');
const WORKER = join(ROOT, 'dist', 'worker', 'main.js');

export interface DemoOptions {
  jobs: number;
  workers: number;
  ssh: boolean;
}

function say(line: string): void {
  process.stdout.write(`${line}\n`);
}

/** Starts a process and waits (bounded) for a line matching `ready` on stdout or stderr. */
function startUntil(command: string, args: string[], ready: RegExp, env: NodeJS.ProcessEnv, timeoutMs = 15_000): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let seen = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${command} did not start within ${timeoutMs} ms:\n${seen}`));
    }, timeoutMs);
    const onData = (data: Buffer) => {
      seen += data.toString();
      if (ready.test(seen)) {
        clearTimeout(timer);
        resolve(child);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${command} exited with ${code} before it was ready:\n${seen}`));
    });
  });
}

interface Cluster {
  hosts: string;
  env: NodeJS.ProcessEnv;
  how: string;
  processes: ChildProcess[];
  stops: Array<() => Promise<void>>;
}

async function startWorkers(dir: string, options: DemoOptions, env: NodeJS.ProcessEnv): Promise<Cluster> {
  const processes: ChildProcess[] = [];
  const useSsh = options.ssh && existsSync(SSHD);
  const entries: string[] = [];
  for (let i = 1; i <= options.workers; i++) {
    const listen = useSsh ? `127.0.0.1:${await freePort()}` : `unix:${join(dir, `worker${i}.sock`)}`;
    processes.push(await startUntil(process.execPath, [WORKER, '--listen', listen, '--slots', '2'], /listening on/, env));
    entries.push(useSsh ? `demo-worker${i}/2,port=${listen.split(':')[1]}` : `worker${i}/2,direct=${listen.slice('unix:'.length)}`);
  }
  if (!useSsh) {
    return { hosts: entries.join(' '), env: {}, how: 'over their Unix sockets (no sshd here: install openssh-server to go through SSH)', processes, stops: [] };
  }
  const sshd = await startLoopbackSshd(join(dir, 'sshd'), 'demo-worker*');
  return {
    hosts: entries.join(' '),
    env: { FERRY_SSH_CONFIG: sshd.sshConfig },
    how: `through SSH (a demo sshd on 127.0.0.1:${sshd.port}, host key checked against its known_hosts)`,
    processes,
    stops: [sshd.stop],
  };
}

async function waitForExit(pid: number): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    try {
      process.kill(pid, 0);
    } catch {
      return; // Gone.
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

function make(buildDir: string, jobs: number, cc: string, env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn('make', ['-s', '-C', SAMPLE, `-j${jobs}`, `BUILD=${buildDir}`, `CC=${cc}`, 'all'], {
      env,
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    child.once('error', reject);
    child.once('exit', (code) => resolve(code ?? 1));
  });
}

/** Compares every file of the local build with the Ferry build; dependency files name their own build dir. */
function compareBuilds(localDir: string, ferryDir: string): { compared: number; differing: string[] } {
  const differing: string[] = [];
  const names = readdirSync(join(localDir, 'obj')).filter((n) => n.endsWith('.o') || n.endsWith('.d'));
  for (const name of names) {
    const a = readFileSync(join(localDir, 'obj', name));
    let b: Buffer;
    try {
      b = readFileSync(join(ferryDir, 'obj', name));
    } catch {
      differing.push(`${name} (missing from the Ferry build)`);
      continue;
    }
    const same = name.endsWith('.d') ? a.toString().split(localDir).join('@') === b.toString().split(ferryDir).join('@') : a.equals(b);
    if (!same) differing.push(name);
  }
  return { compared: names.length, differing };
}

export async function runDemo(options: DemoOptions): Promise<number> {
  if (!existsSync(LAUNCHER)) {
    say(`ferry demo: ${LAUNCHER} is missing; run \`npm ci\` (or \`npm run build\`) first`);
    return 2;
  }
  const dir = mkdtempSync(join(tmpdir(), 'ferry-demo-'));
  const baseEnv: NodeJS.ProcessEnv = { ...process.env, FERRY_RUNTIME_DIR: join(dir, 'runtime'), FERRY_STATE_DIR: join(dir, 'state') };
  delete baseEnv.NODE_EXTRA_CA_CERTS;
  let cluster: Cluster | undefined;
  const cleanup = async () => {
    const control = Control.open(baseEnv);
    const stopped = await control?.stop();
    control?.close();
    // Wait (bounded) for the coordinator and the workers to exit before their files are removed.
    if (stopped) await waitForExit(stopped.pid);
    await Promise.all((cluster?.stops ?? []).map((stopSshd) => stopSshd()));
    await Promise.all(
      (cluster?.processes ?? []).map(
        (child) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve();
            child.once('exit', () => resolve());
            child.kill('SIGTERM');
          }),
      ),
    );
    rmSync(dir, { recursive: true, force: true });
  };
  const onSignal = () => {
    void cleanup().then(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  try {
    say(`Ferry demo: ${options.workers} workers with 2 slots each, sample project ${SAMPLE}`);
    cluster = await startWorkers(dir, options, baseEnv);
    say(`workers reached ${cluster.how}`);
    say(`FERRY_HOSTS="${cluster.hosts}"`);
    const ferryEnv = { ...baseEnv, ...cluster.env, FERRY_HOSTS: cluster.hosts };

    say(`\n1/2  make -j${options.jobs} CC="ferry gcc"  (the coordinator starts on the first compile)`);
    const ferryStart = Date.now();
    const ferryExit = await make(join(dir, 'ferry'), options.jobs, `${LAUNCHER} gcc`, ferryEnv);
    const ferryMs = Date.now() - ferryStart;
    if (ferryExit !== 0) {
      say(`the build through Ferry failed (make exit ${ferryExit}); coordinator log: ${join(dir, 'runtime', 'coordinator.log')}`);
      say(readFileSync(join(dir, 'runtime', 'coordinator.log'), 'utf8'));
      return 1;
    }
    const control = Control.open(ferryEnv);
    const status = await control?.status(1000);
    const stats = await control?.stats();
    control?.close();
    say(`     built in ${(ferryMs / 1000).toFixed(1)} s; where each job ran:`);
    for (const job of status?.recent ?? []) {
      say(`       ${job.where.padEnd(16)} ${job.source.padEnd(28)} ${String(job.millis).padStart(5)} ms${job.reason ? `  (${job.reason})` : ''}`);
    }

    say(`\n2/2  make -j${options.jobs} CC=gcc  (local reference build)`);
    const localExit = await make(join(dir, 'local'), options.jobs, 'gcc', baseEnv);
    if (localExit !== 0) {
      say(`the local build failed (make exit ${localExit})`);
      return 1;
    }
    const { compared, differing } = compareBuilds(join(dir, 'local'), join(dir, 'ferry'));
    const remote = stats?.jobs?.remote ?? 0;
    const local = stats?.jobs?.local ?? 0;
    say(`\njobs: ${remote} compiled remotely, ${local} ran locally (${Object.entries(stats?.local ?? {}).map(([r, n]) => `${r}: ${n}`).join(', ') || 'none'})`);
    const ratio = stats?.bytes?.sourceSent ? (stats.bytes.sourceRaw / stats.bytes.sourceSent).toFixed(2) : '-';
    say(`sources: ${stats?.bytes?.sourceRaw ?? 0} bytes preprocessed, ${stats?.bytes?.sourceSent ?? 0} sent (LZ4 ratio ${ratio})`);
    if (differing.length > 0) {
      say(`FAILED: ${differing.length} of ${compared} files differ from the local build: ${differing.join(', ')}`);
      return 1;
    }
    if (remote === 0) {
      say('FAILED: no job was compiled remotely');
      return 1;
    }
    say(`OK: all ${compared} objects and dependency files are identical to the local build`);
    return 0;
  } finally {
    process.off('SIGINT', onSignal);
    await cleanup();
  }
}
