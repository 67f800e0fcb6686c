// Initiator CPU per compile job, Ferry against distcc, both through SSH on loopback, measured the same
// way in the same run (absolute figures move between runs and machines; only the ratios mean much).
//   node test/bench/job-cpu.mjs [--runs N]        (N measured jobs per tool, default 30; needs `npm run build`)
//
// Workload: a trivial C file, `gcc -O2 -c x.c -o x.o`, jobs one after the other, 3 warm-up jobs first.
// - Ferry: one ferry-worker on 127.0.0.1 reached through a throwaway sshd on 127.0.0.1 (as `ferry demo`
//   does), jobs `dist/bin/ferry gcc …`; the coordinator starts on the first warm-up job.
// - distcc: distccd on 127.0.0.1, reached through `ssh -N -L` over the same sshd, jobs `distcc gcc …`.
// Per job we take the client process's user+sys from wait4() (a small C wrapper compiled here runs the
// jobs, so Node's own activity is never in the figures) and its wall time. The long-lived initiator
// processes (Ferry's coordinator, which also preprocesses and holds the ssh2 connection; distcc's
// `ssh -L` client) are read from /proc before and after the measured jobs, their delta divided by N.
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, readdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const LAUNCHER = join(repo, 'dist', 'bin', 'ferry');
const WORKER = join(repo, 'dist', 'worker', 'main.js');
const CLI = join(repo, 'dist', 'cli', 'main.js');
// Built by `npm run build`; shared with `ferry demo`.
const loopbackSshd = createRequire(import.meta.url)(join(repo, 'dist', 'cli', 'loopback-sshd.js'));
const SSHD = loopbackSshd.SSHD;
const WARMUP = 3;
const TIMEOUT_MS = 300_000;

const argv = process.argv.slice(2);
let runs = 30;
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === '--runs') runs = Number(argv[++i]);
  else if (argv[i].startsWith('--runs=')) runs = Number(argv[i].slice('--runs='.length));
  else runs = NaN;
}
if (!Number.isInteger(runs) || runs < 1) {
  console.error('usage: node test/bench/job-cpu.mjs [--runs N]');
  process.exit(2);
}
for (const need of [LAUNCHER, WORKER, CLI, SSHD, '/usr/bin/distcc', '/usr/bin/distccd']) {
  if (!existsSync(need)) {
    console.error(`job-cpu: ${need} is missing (run \`npm run build\`; install openssh-server and distcc)`);
    process.exit(2);
  }
}

const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());
const tmp = mkdtempSync(join(tmpdir(), 'ferry-job-cpu-'));
const say = (line) => process.stderr.write(`job-cpu: ${line}\n`);

// ---------------------------------------------------------------------------------------------
// Everything started here is recorded, and cleanup() stops it by pid whatever happens (normal end,
// exception, overall timeout, Ctrl-C). It is synchronous so it can also run from a timer or signal.
// ---------------------------------------------------------------------------------------------
const started = []; // { name, pid, group, exited } in start order; group: started detached, so -pid is its whole group
let ferryEnv; // set once the Ferry setup exists, so cleanup knows to ask the coordinator to stop
let coordinatorPid;
let cleanedUp = false;

const sleepSync = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
function alive(pid) {
  try {
    process.kill(pid, 0);
    // A zombie still answers kill(0); it has exited for our purposes.
    return !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}
function signal(pid, group, sig) {
  try {
    process.kill(group ? -pid : pid, sig);
  } catch {
    /* already gone */
  }
}
function stopPid(pid, group, graceMs = 3000) {
  if (!alive(pid)) return;
  signal(pid, group, 'SIGTERM');
  for (let waited = 0; waited < graceMs && alive(pid); waited += 50) sleepSync(50);
  if (alive(pid)) signal(pid, group, 'SIGKILL');
}

/** The coordinator is the launcher's double-forked grandchild: find it by our unique runtime dir if
 *  `ferry status` never told us its pid (e.g. the first job failed). */
function findCoordinator() {
  const marker = `FERRY_RUNTIME_DIR=${join(tmp, 'ferry-runtime')}`;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (!cmdline.includes('coordinator')) continue;
      if (readFileSync(`/proc/${entry}/environ`, 'utf8').split('\0').includes(marker)) return Number(entry);
    } catch {
      /* raced with an exit */
    }
  }
  return undefined;
}

function cleanup() {
  if (cleanedUp) return;
  cleanedUp = true;
  // First the jobs in flight (no new launcher may start a coordinator behind our back), then the
  // coordinator, then the rest in reverse start order: clients (ssh -L) before the servers they use.
  for (const { name, pid, group } of started) if (name === 'run-jobs') stopPid(pid, group);
  if (ferryEnv) {
    try {
      execFileSync(process.execPath, [CLI, 'stop'], { env: ferryEnv, timeout: 10_000, stdio: 'ignore' });
    } catch {
      /* not running, or not answering: killed below */
    }
    const pid = coordinatorPid ?? findCoordinator();
    if (pid) stopPid(pid, false);
  }
  for (const { name, pid, group } of [...started].reverse()) if (name !== 'run-jobs') stopPid(pid, group);
  try {
    rmSync(tmp, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  } catch (err) {
    say(`could not remove ${tmp}: ${err.message}`);
  }
}

/** Stops everything, lets Node reap what it started (bounded) rather than leave zombies to init, exits. */
async function cleanupAndExit(code) {
  cleanup();
  await Promise.race([Promise.all(started.map((s) => s.exited)), new Promise((r) => setTimeout(r, 2000))]);
  process.exit(code);
}
const overall = setTimeout(() => {
  say(`FAILED: still running after ${TIMEOUT_MS / 1000} s; stopping everything`);
  void cleanupAndExit(1);
}, TIMEOUT_MS);
for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => void cleanupAndExit(130));

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------
const { freePort, waitForPort } = loopbackSshd;

/** Starts a long-lived process in its own process group (so stopping it also stops the children it
 *  forks, e.g. distccd's pre-forked servers, and its signals never reach us), output to a log file. */
function startDaemon(name, command, args, env = process.env) {
  const log = join(tmp, `${name}.out`);
  const out = openSync(log, 'a');
  const child = spawn(command, args, { env, detached: true, stdio: ['ignore', out, out] });
  started.push({ name, pid: child.pid, group: true, exited: new Promise((resolve) => child.once('exit', resolve)) });
  child.unref();
  closeSync(out); // the child holds its own copy
  return { child, log };
}

/** CPU ever used by pid and every process below it, in ms: utime+stime plus cutime+cstime (children
 *  reaped), summed over the live tree. A delta of this is exact for the interval as long as every
 *  exiting process is reaped inside the tree; it is counted in clock ticks. `own` is the root's
 *  utime+stime alone (e.g. the coordinator without the preprocessors it ran). */
function treeCpu(rootPid) {
  const procs = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // Fields after the command name (which may hold spaces): state ppid … utime stime cutime cstime.
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const own = Number(f[11]) + Number(f[12]);
      procs.set(Number(entry), { ppid: Number(f[1]), own, ticks: own + Number(f[13]) + Number(f[14]) });
    } catch {
      /* raced with an exit */
    }
  }
  if (!procs.has(rootPid)) throw new Error(`process ${rootPid} is gone`);
  let ticks = 0;
  for (const [pid, p] of procs) {
    for (let q = pid; q > 1; q = procs.get(q)?.ppid ?? 0) {
      if (q === rootPid) {
        ticks += p.ticks;
        break;
      }
    }
  }
  return { total: (ticks * 1000) / CLK_TCK, own: (procs.get(rootPid).own * 1000) / CLK_TCK };
}

// run-jobs N LOG cmd args…: runs cmd N times one after the other in the current directory, output
// appended to LOG, and prints per run "<user+sys µs of that child and its waited-for children> <wall µs>".
// A failing run stops it with exit 1 (the log says why).
const WRAPPER_C = `
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static long us(struct timespec t) { return t.tv_sec * 1000000L + t.tv_nsec / 1000; }
int main(int argc, char **argv) {
  if (argc < 4) { fprintf(stderr, "usage: run-jobs N LOG cmd args...\\n"); return 2; }
  int n = atoi(argv[1]);
  int log = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (log < 0) { perror(argv[2]); return 2; }
  for (int i = 0; i < n; i++) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid == 0) {
      int null = open("/dev/null", O_RDONLY);
      dup2(null, 0); dup2(log, 1); dup2(log, 2);
      execvp(argv[3], argv + 3);
      _exit(127);
    }
    int status; struct rusage ru;
    if (pid < 0 || wait4(pid, &status, 0, &ru) < 0) { perror("fork/wait4"); return 1; }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { fprintf(stderr, "run %d failed: status %d\\n", i, status); return 1; }
    long cpu = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000L + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
    printf("%ld %ld\\n", cpu, us(t1) - us(t0));
  }
  return 0;
}
`;
const wrapper = join(tmp, 'run-jobs');

/** Runs `n` jobs through the wrapper; resolves to [{ cpuMs, wallMs }]. */
function runJobs(n, command, env, logName) {
  const log = join(tmp, `${logName}.log`);
  return new Promise((resolve, reject) => {
    // Its own process group, so that stopping it on a timeout also stops the job it is running.
    const child = spawn(wrapper, [String(n), log, ...command], { cwd: join(tmp, 'src'), env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    started.push({ name: 'run-jobs', pid: child.pid, group: true, exited: new Promise((r) => child.once('exit', r)) });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) {
        const tail = existsSync(log) ? readFileSync(log, 'utf8').split('\n').slice(-15).join('\n') : '';
        return reject(new Error(`${command.join(' ')}: ${err.trim()}\n--- job output (last lines) ---\n${tail}`));
      }
      resolve(out.trim().split('\n').map((line) => {
        const [cpu, wall] = line.split(' ').map(Number);
        return { cpuMs: cpu / 1000, wallMs: wall / 1000 };
      }));
    });
  });
}

function ferryCli(args) {
  return execFileSync(process.execPath, [CLI, ...args], { env: ferryEnv, timeout: 20_000 }).toString();
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const summary = (xs) => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs) });

/**
 * Warm-up, then the measured jobs, with /proc deltas of the long-lived processes around them.
 * `initiator` and `remote` map a label to a root pid whose whole tree is counted.
 */
async function measure(name, command, env, initiator, remote) {
  await runJobs(WARMUP, command, env, `${name}-warmup`);
  const roots = { ...initiator(), ...remote() };
  const before = Object.fromEntries(Object.entries(roots).map(([k, pid]) => [k, treeCpu(pid)]));
  const jobs = await runJobs(runs, command, env, name);
  const after = Object.fromEntries(Object.entries(roots).map(([k, pid]) => [k, treeCpu(pid)]));
  const delta = Object.fromEntries(Object.keys(roots).map((k) => [k, after[k].total - before[k].total]));
  const ownDelta = Object.fromEntries(Object.keys(roots).map((k) => [k, after[k].own - before[k].own]));
  const share = (keys) => keys.reduce((sum, k) => sum + delta[k], 0) / runs;
  const initiatorShare = share(Object.keys(initiator()));
  return {
    client: summary(jobs.map((j) => j.cpuMs)),
    // The long-lived processes are only known over the whole batch: each job gets an equal share, so the
    // spread [min..max] of this column is the client process's.
    whole: summary(jobs.map((j) => j.cpuMs + initiatorShare)),
    wall: summary(jobs.map((j) => j.wallMs)),
    parts: Object.fromEntries(Object.keys(delta).map((k) => [k, { total: delta[k] / runs, own: ownDelta[k] / runs }])),
    remote: share(Object.keys(remote())),
  };
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------
let exitCode = 0;
try {
  execFileSync(process.env.CC || 'cc', ['-O2', '-Wall', '-x', 'c', '-o', wrapper, '-'], { input: WRAPPER_C });
  mkdirSync(join(tmp, 'src'));
  writeFileSync(join(tmp, 'src', 'x.c'), '#include <stdio.h>\nint f(void){return 1;}\n');

  // Node parses the whole CA bundle at every start when NODE_EXTRA_CA_CERTS is set; no real user setup
  // needs it here, and it would inflate Ferry's worker/coordinator start, not the per-job figures.
  const baseEnv = { ...process.env };
  delete baseEnv.NODE_EXTRA_CA_CERTS;
  delete baseEnv.FERRY_DISABLE;

  // A throwaway sshd on loopback with its own host key, trusting a throwaway user key (as `ferry demo`).
  const sshdStarted = await loopbackSshd.startLoopbackSshd(join(tmp, 'sshd'), 'benchhost');
  started.push({ name: 'sshd', pid: sshdStarted.pid, group: false, exited: sshdStarted.exited });
  const sshd = { child: { pid: sshdStarted.pid } };
  const sshConfig = sshdStarted.sshConfig;

  // ---- Ferry ----
  const workerPort = await freePort();
  const worker = startDaemon('ferry-worker', process.execPath, [WORKER, '--listen', `127.0.0.1:${workerPort}`, '--slots', '2'], baseEnv);
  await waitForPort(workerPort, 'ferry-worker', 20_000);
  ferryEnv = {
    ...baseEnv,
    FERRY_SSH_CONFIG: sshConfig,
    FERRY_HOSTS: `benchhost/2,port=${workerPort}`,
    FERRY_RUNTIME_DIR: join(tmp, 'ferry-runtime'),
    FERRY_STATE_DIR: join(tmp, 'ferry-state'),
  };
  const ferry = await measure('ferry', [LAUNCHER, 'gcc', '-O2', '-c', 'x.c', '-o', 'x.o'], ferryEnv,
    () => {
      // The first warm-up job started the coordinator; its tree includes the preprocessors it reaps.
      coordinatorPid ??= JSON.parse(ferryCli(['status', '--json'])).pid;
      if (!coordinatorPid) throw new Error('`ferry status --json` names no coordinator pid');
      return { coordinator: coordinatorPid };
    },
    () => ({ sshd: sshd.child.pid, worker: worker.child.pid }));
  const stats = JSON.parse(ferryCli(['stats', '--json']));
  if (Number(stats.jobs.remote) !== WARMUP + runs || Number(stats.jobs.local) !== 0) {
    throw new Error(`Ferry ran ${stats.jobs.remote} jobs remotely and ${stats.jobs.local} locally, expected ${WARMUP + runs} remote: ` +
      `${JSON.stringify(stats.local)}; see ${join(tmp, 'ferry-runtime', 'coordinator.log')}`);
  }
  // Stop the coordinator now so its ssh2 connection is gone before distcc's turn on the same sshd.
  ferryCli(['stop']);
  for (let waited = 0; waited < 5000 && alive(coordinatorPid); waited += 50) sleepSync(50);

  // ---- distcc ----
  // distccd run as root drops to an unprivileged user: give it a directory it can write its log to.
  const distccDir = join(tmp, 'distccd');
  mkdirSync(distccDir);
  chmodSync(tmp, 0o755);
  chmodSync(distccDir, 0o777);
  const distccdPort = await freePort();
  const distccdLog = join(distccDir, 'distccd.log');
  const distccd = startDaemon('distccd', '/usr/bin/distccd', [
    '--daemon', '--no-detach', '--allow', '127.0.0.1', '--listen', '127.0.0.1', '--port', String(distccdPort),
    '--log-file', distccdLog, '--log-level', 'info', '--jobs', '2',
  ], baseEnv);
  await waitForPort(distccdPort, 'distccd');
  const localPort = await freePort();
  const tunnel = startDaemon('ssh-L', 'ssh', ['-F', sshConfig, '-N', '-o', 'ExitOnForwardFailure=yes',
    '-L', `127.0.0.1:${localPort}:127.0.0.1:${distccdPort}`, 'benchhost'], baseEnv);
  await waitForPort(localPort, 'ssh -L forward');
  mkdirSync(join(tmp, 'distcc-client'));
  const distccEnv = {
    ...baseEnv,
    DISTCC_HOSTS: `127.0.0.1:${localPort}/2`,
    DISTCC_DIR: join(tmp, 'distcc-client'), // its lock and state files, not ~/.distcc
    DISTCC_FALLBACK: '0', // a failed remote job is an error, not a silent local compile
  };
  const distcc = await measure('distcc', ['distcc', 'gcc', '-O2', '-c', 'x.c', '-o', 'x.o'], distccEnv,
    () => ({ 'ssh -L': tunnel.child.pid }),
    () => ({ sshd: sshd.child.pid, distccd: distccd.child.pid }));
  const compiled = (readFileSync(distccdLog, 'utf8').match(/COMPILE_OK/g) ?? []).length;
  if (compiled !== WARMUP + runs) {
    throw new Error(`distccd logged ${compiled} COMPILE_OK, expected ${WARMUP + runs}; see ${distccdLog}`);
  }

  // ---- Report ----
  const ms = (x) => (x < 10 ? x.toFixed(2) : x.toFixed(1));
  const cell = (s) => `${ms(s.median)} ms [${ms(s.min)}..${ms(s.max)}]`.padEnd(26);
  const ratio = (a, b) => `${(a.median / b.median).toFixed(2)}`.padEnd(26);
  console.log(`initiator CPU per job, trivial C file, N=${runs} sequential jobs after ${WARMUP} warm-ups (median [min..max])`);
  console.log(`${''.padEnd(22)}${'client process'.padEnd(26)}${'whole initiator'.padEnd(26)}wall`);
  console.log(`${'ferry (ssh2 tunnel)'.padEnd(22)}${cell(ferry.client)}${cell(ferry.whole)}${ms(ferry.wall.median)} ms`);
  console.log(`${'distcc (ssh -L)'.padEnd(22)}${cell(distcc.client)}${cell(distcc.whole)}${ms(distcc.wall.median)} ms`);
  console.log(`${'ratio ferry/distcc'.padEnd(22)}${ratio(ferry.client, distcc.client)}${ratio(ferry.whole, distcc.whole)}${(ferry.wall.median / distcc.wall.median).toFixed(2)}`);
  // Each long-lived process tree per job: total (process itself + the children it reaped).
  const parts = (r) => Object.entries(r.parts)
    .map(([k, v]) => `${k} ${ms(v.total)}${v.total - v.own >= 0.005 ? ` (itself ${ms(v.own)} + children ${ms(v.total - v.own)})` : ''}`).join(', ');
  console.log(`per job, /proc deltas / N (ms): ferry: ${parts(ferry)}`);
  console.log(`                                distcc: ${parts(distcc)}`);
  console.log(`remote CPU per job (sshd + worker/distccd trees): ferry ${ms(ferry.remote)} ms, distcc ${ms(distcc.remote)} ms, ratio ${(ferry.remote / distcc.remote).toFixed(2)}`);
  console.log('client = wait4 rusage of the ferry/distcc process (distcc\'s includes its local cpp; Ferry preprocesses in the coordinator)');
  console.log(`whole = client + the coordinator (ferry) or the ssh -L client (distcc): /proc delta over the N jobs / N, in ${1000 / CLK_TCK} ms ticks` +
    ' (so the [min..max] spread is the client\'s)');
} catch (err) {
  say(`FAILED: ${err instanceof Error ? err.message : err}`);
  exitCode = 1;
} finally {
  clearTimeout(overall);
  await cleanupAndExit(exitCode);
}
