// Infrastructure for test/bench/run.mjs: processes we start and always stop, CPU accounting per side
// (cgroup v2 cpu.stat, else /proc), and remotes in network namespaces each with its own sshd.
// Everything here is synchronous where it matters for cleanup, so that a timer or a signal can run it.
import { execFileSync, spawn } from 'node:child_process';
import {
  chmodSync, closeSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, rmdirSync, writeFileSync, writeSync,
} from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const sleepSync = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T0 = Date.now();
export function say(line) {
  process.stderr.write(`[bench ${((Date.now() - T0) / 1000).toFixed(0).padStart(4)} s] ${line}\n`);
}

function sh(cmd, args, opts = {}) {
  return execFileSync(cmd, args, { encoding: 'utf8', timeout: opts.timeout ?? 20_000, stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}

export function alive(pid) {
  try {
    process.kill(pid, 0);
    return !/^\S+ \(.*\) Z/s.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); // a zombie has exited
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
/** SIGTERM, wait (bounded), SIGKILL. */
export function stopPid(pid, group = false, graceMs = 3000) {
  if (!pid || !alive(pid)) return;
  signal(pid, group, 'SIGTERM');
  for (let waited = 0; waited < graceMs && alive(pid); waited += 50) sleepSync(50);
  if (alive(pid)) signal(pid, group, 'SIGKILL');
  for (let waited = 0; waited < 2000 && alive(pid); waited += 50) sleepSync(50);
}

// ---------------------------------------------------------------------------------------------
// Small C helpers, compiled at start: they keep Node out of every measured process tree.
// ---------------------------------------------------------------------------------------------
// bench-exec exec CGPROCS cmd args…          joins the cgroup (CGPROCS "-": none), then execs cmd
// bench-exec run CGPROCS N LOG cmd args…     joins the cgroup, runs cmd N times one after the other
//   (stdin /dev/null, stdout+stderr appended to LOG), prints each run's "<wall µs> <own CPU µs>" (the
//   command's own process, from /proc/PID/schedstat while a zombie: its children not included) and
//   at the end "cpu <µs>": user+sys of every descendant it waited for (RUSAGE_CHILDREN). A failing
//   run ends it with status 1.
const BENCH_EXEC_C = String.raw`
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static long us(struct timespec t) { return t.tv_sec * 1000000L + t.tv_nsec / 1000; }
static void join_cgroup(const char *procs) {
  if (strcmp(procs, "-") == 0) return;
  int fd = open(procs, O_WRONLY);
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
  if (fd < 0 || write(fd, buf, n) != n) { perror(procs); exit(125); }
  close(fd);
}
int main(int argc, char **argv) {
  if (argc >= 4 && strcmp(argv[1], "exec") == 0) {
    join_cgroup(argv[2]);
    execvp(argv[3], argv + 3);
    perror(argv[3]);
    return 127;
  }
  if (argc < 7 || strcmp(argv[1], "run") != 0) { fprintf(stderr, "usage: bench-exec exec CG cmd… | run CG N LOG cmd…\n"); return 2; }
  join_cgroup(argv[2]);
  int n = atoi(argv[3]);
  int log = open(argv[4], O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (log < 0) { perror(argv[4]); return 2; }
  for (int i = 0; i < n; i++) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid == 0) {
      int null = open("/dev/null", O_RDONLY);
      dup2(null, 0); dup2(log, 1); dup2(log, 2);
      execvp(argv[5], argv + 5);
      _exit(127);
    }
    /* Wait without reaping, read the exited process's own CPU (its main thread's time on a CPU in ns,
     * children excluded) while it is a zombie, then reap it. */
    siginfo_t si;
    if (pid < 0 || waitid(P_PID, pid, &si, WEXITED | WNOWAIT) < 0) { perror("fork/waitid"); return 1; }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    unsigned long long own_ns = 0;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/schedstat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f) { if (fscanf(f, "%llu", &own_ns) != 1) own_ns = 0; fclose(f); }
    int status;
    if (waitpid(pid, &status, 0) < 0) { perror("waitpid"); return 1; }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { fprintf(stderr, "run %d failed: status %d\n", i, status); return 1; }
    printf("%ld %llu\n", us(t1) - us(t0), own_ns / 1000);
  }
  struct rusage ru;
  getrusage(RUSAGE_CHILDREN, &ru);
  printf("cpu %ld\n", (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000L + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  return 0;
}
`;

/** Compiles the helpers into dir; returns { benchExec, sshWrapper(config) }. */
export function buildHelpers(dir) {
  const cc = process.env.CC || 'cc';
  const benchExec = join(dir, 'bench-exec');
  execFileSync(cc, ['-O2', '-Wall', '-x', 'c', '-o', benchExec, '-'], { input: BENCH_EXEC_C });
  return {
    benchExec,
    /** A tiny `ssh -F config "$@"` for DISTCC_SSH (distcc takes one program name, no arguments). */
    sshWrapper(config, name) {
      const out = join(dir, name);
      const src = `#include <unistd.h>\n#include <stdio.h>\n#include <stdlib.h>\nint main(int c, char **v) {\n` +
        `  char **a = calloc(c + 3, sizeof *a); a[0] = "ssh"; a[1] = "-F"; a[2] = ${JSON.stringify(config)};\n` +
        `  for (int i = 1; i < c; i++) a[i + 2] = v[i];\n  execv("/usr/bin/ssh", a); perror("ssh"); return 255;\n}\n`;
      execFileSync(cc, ['-O2', '-x', 'c', '-o', out, '-'], { input: src });
      return out;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Processes: every long-lived one is recorded and stopped by pid (its own process group) at the end.
// ---------------------------------------------------------------------------------------------
export class Processes {
  constructor(benchExec) {
    this.benchExec = benchExec;
    /** { name, pid, exited: Promise } */
    this.daemons = [];
    this.runners = new Set();
  }

  /**
   * Starts a long-lived process in its own process group, joined to `cgroupProcs` (a cgroup.procs
   * file, or "-") before it execs, output appended to `log`. `ready`: a RegExp awaited in the log,
   * or an async predicate; bounded by `readyMs`.
   */
  async daemon(name, argv, { env, cwd, cgroupProcs = '-', log, ready, readyMs = 20_000, stdin = 'ignore' }) {
    const out = openSync(log, 'a');
    const child = spawn(this.benchExec, ['exec', cgroupProcs, ...argv], { env, cwd, detached: true, stdio: [stdin, out, out] });
    closeSync(out);
    const record = { name, pid: child.pid, child, exited: new Promise((r) => child.once('exit', (code, sig) => r({ code, sig }))) };
    child.once('error', () => {});
    this.daemons.push(record);
    let gone = false;
    void record.exited.then(() => (gone = true));
    const deadline = Date.now() + readyMs;
    if (ready) {
      for (;;) {
        if (gone) throw new Error(`${name} exited before it was ready; its log ${log}:\n${tail(log)}`);
        const ok = ready instanceof RegExp ? ready.test(readSafe(log)) : await ready();
        if (ok) break;
        if (Date.now() > deadline) throw new Error(`${name} not ready within ${readyMs} ms; its log ${log}:\n${tail(log)}`);
        await sleep(50);
      }
    }
    return record;
  }

  async stopDaemon(record, graceMs = 3000) {
    stopPid(record.pid, true, graceMs);
    await Promise.race([record.exited, sleep(1000)]);
    this.daemons = this.daemons.filter((d) => d !== record);
  }

  /**
   * Runs argv `n` times one after the other through bench-exec (joined to `cgroupProcs`), output to
   * `log`. Resolves { walls: [µs], ownUs: [µs, the command's own process], childCpuUs: all it waited for }. Rejects on failure or after `timeoutMs` (the whole
   * process group is killed).
   */
  run(argv, { env, cwd, cgroupProcs = '-', log, n = 1, timeoutMs = 600_000 }) {
    return new Promise((resolve, reject) => {
      const child = spawn(this.benchExec, ['run', cgroupProcs, String(n), log, ...argv], { env, cwd, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
      this.runners.add(child.pid);
      let out = '';
      let err = '';
      let timedOut = false;
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (err += d));
      const timer = setTimeout(() => {
        timedOut = true;
        stopPid(child.pid, true, 2000);
      }, timeoutMs);
      child.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      child.on('close', (code) => {
        clearTimeout(timer);
        this.runners.delete(child.pid);
        signal(child.pid, true, 'SIGKILL'); // anything the command left behind in its group
        if (code !== 0 || timedOut) {
          reject(new Error(`${timedOut ? `timed out after ${timeoutMs / 1000} s: ` : ''}${argv.join(' ')} (in ${cwd}): ${err.trim()}\n` +
            `--- output (last lines of ${log}) ---\n${tail(log, 25)}`));
          return;
        }
        const lines = out.trim().split('\n');
        const cpu = lines.pop();
        resolve({ walls: lines.map((l) => Number(l.split(' ')[0])), ownUs: lines.map((l) => Number(l.split(' ')[1])), childCpuUs: Number(cpu.split(' ')[1]) });
      });
    });
  }

  /** Synchronous: running commands first (no build may start anything new), then daemons newest first. */
  stopAll() {
    for (const pid of this.runners) stopPid(pid, true, 2000);
    this.runners.clear();
    for (const d of [...this.daemons].reverse()) stopPid(d.pid, true, 3000);
    this.daemons = [];
  }
}

export function readSafe(file) {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}
export function tail(file, n = 15) {
  return readSafe(file).split('\n').slice(-n).join('\n');
}

// ---------------------------------------------------------------------------------------------
// CPU accounting
// ---------------------------------------------------------------------------------------------
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());
const INITIATOR_LEAVES = ['jobs', 'ferry', 'distcc-L', 'distcc-ssh'];

/** CPU the whole machine spent busy (all cores, all processes, kernel included) since boot, in µs. */
export function machineBusyUs() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal …
  return ((f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) * 1e6) / CLK_TCK;
}
const REMOTE_LEAVES = ['sshd', 'ferry', 'distccd'];

/** The first writable cgroup2 mount whose cpu.stat has usage_usec: /sys/fs/cgroup, else any other (hybrid systems). */
export function findCgroup2() {
  const mounts = readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')).filter((f) => f[2] === 'cgroup2').map((f) => f[1]);
  const notes = [];
  if (!mounts.includes('/sys/fs/cgroup')) notes.push('/sys/fs/cgroup is not cgroup2 (a cgroup v1 or hybrid layout)');
  for (const mount of ['/sys/fs/cgroup', ...mounts.filter((m) => m !== '/sys/fs/cgroup')]) {
    if (!mounts.includes(mount)) continue;
    const probe = join(mount, `ferry-bench-probe-${process.pid}`);
    try {
      mkdirSync(probe);
      const ok = /usage_usec/.test(readFileSync(join(probe, 'cpu.stat'), 'utf8'));
      rmdirSync(probe);
      if (ok) return { mount, notes };
      notes.push(`${mount}: no usage_usec in cpu.stat`);
    } catch (err) {
      notes.push(`${mount} is not writable: ${err.code ?? err.message}`);
      try {
        rmdirSync(probe);
      } catch {
        /* never made */
      }
    }
  }
  return { mount: undefined, notes };
}

/**
 * cgroup v2: <mount>/ferry-bench-<pid>/{initiator,remote}/<leaf>; a side's CPU is the sum of the leaves
 * that belong to the mode measured, so idle daemons of the other modes are left out.
 */
export class CgroupAccounting {
  constructor(mount) {
    this.kind = 'cgroup';
    this.root = join(mount, `ferry-bench-${process.pid}`);
    this.made = [];
    const mk = (p) => {
      mkdirSync(p);
      this.made.push(p);
    };
    mk(this.root);
    mk(join(this.root, 'initiator'));
    mk(join(this.root, 'remote'));
    for (const l of INITIATOR_LEAVES) mk(join(this.root, 'initiator', l));
    for (const l of REMOTE_LEAVES) mk(join(this.root, 'remote', l));
  }
  procs(side, leaf) {
    return join(this.root, side, leaf, 'cgroup.procs');
  }
  usage(side, leaf) {
    const m = /usage_usec (\d+)/.exec(readFileSync(join(this.root, side, leaf, 'cpu.stat'), 'utf8'));
    return Number(m[1]);
  }
  /** { initiator: {leaf: µs}, remote: {leaf: µs} } */
  snapshot() {
    return {
      initiator: Object.fromEntries(INITIATOR_LEAVES.map((l) => [l, this.usage('initiator', l)])),
      remote: Object.fromEntries(REMOTE_LEAVES.map((l) => [l, this.usage('remote', l)])),
    };
  }
  /** Kills by pid whatever is still in our cgroups (only processes this run started), then removes them. */
  cleanup() {
    for (let round = 0; round < 20; round++) {
      let any = false;
      for (const dir of [...this.made].reverse()) {
        for (const pid of readSafe(join(dir, 'cgroup.procs')).split('\n').map(Number).filter((p) => p > 0)) {
          any = true;
          signal(pid, false, round < 5 ? 'SIGTERM' : 'SIGKILL');
        }
      }
      if (!any) break;
      sleepSync(100);
    }
    for (const dir of [...this.made].reverse()) {
      try {
        rmdirSync(dir);
      } catch (err) {
        if (err.code !== 'ENOENT') say(`could not remove cgroup ${dir}: ${err.code}`);
      }
    }
    this.made = [];
  }
}

/** /proc fallback: CPU of registered process trees (utime+stime of the live tree plus reaped children). */
export class ProcAccounting {
  constructor() {
    this.kind = 'proc';
    this.roots = { initiator: Object.fromEntries(INITIATOR_LEAVES.map((l) => [l, []])), remote: Object.fromEntries(REMOTE_LEAVES.map((l) => [l, []])) };
  }
  procs() {
    return '-';
  }
  register(side, leaf, pid) {
    this.roots[side][leaf].push(pid);
  }
  snapshot() {
    const procs = new Map();
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
        const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        procs.set(Number(entry), { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]) });
      } catch {
        /* raced with an exit */
      }
    }
    const tree = (roots) => {
      let ticks = 0;
      for (const [pid, p] of procs) {
        for (let q = pid; q > 1; q = procs.get(q)?.ppid ?? 0) {
          if (roots.includes(q)) {
            ticks += p.ticks;
            break;
          }
        }
      }
      return (ticks * 1e6) / CLK_TCK;
    };
    const side = (s) => Object.fromEntries(Object.entries(this.roots[s]).map(([l, pids]) => [l, tree(pids)]));
    // "jobs" is taken from bench-exec's RUSAGE_CHILDREN instead (see run.mjs).
    return { initiator: side('initiator'), remote: side('remote') };
  }
  cleanup() {}
}

// ---------------------------------------------------------------------------------------------
// Remotes in network namespaces
// ---------------------------------------------------------------------------------------------
const SLOT_LOCK_DIR = join(tmpdir(), 'ferry-cluster-slots'); // shared with test/support/cluster.ts
const SLOT_COUNT = 16384;

function ip(args) {
  return sh('ip', args);
}
function listNamespaces() {
  return ip(['netns', 'list']).split('\n').map((l) => l.trim().split(/\s+/)[0]).filter(Boolean);
}
function namespacePids(ns) {
  try {
    return ip(['netns', 'pids', ns]).split('\n').map((l) => Number(l.trim())).filter((n) => n > 0);
  } catch {
    return [];
  }
}
function pidAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === 'EPERM';
  }
}
function slotAddresses(slot) {
  const base = slot * 4;
  const third = base >> 8;
  const fourth = base & 255;
  return { host: `10.213.${third}.${fourth + 1}`, remote: `10.213.${third}.${fourth + 2}` };
}
function claimSlot(seed) {
  mkdirSync(SLOT_LOCK_DIR, { recursive: true });
  const used = new Set();
  for (const m of ip(['-o', '-4', 'addr']).matchAll(/inet 10\.213\.(\d+)\.(\d+)\//g)) used.add(((Number(m[1]) << 8) + Number(m[2])) >> 2);
  for (let i = 0; i < SLOT_COUNT; i++) {
    const slot = (seed + i) % SLOT_COUNT;
    if (used.has(slot)) continue;
    const lock = join(SLOT_LOCK_DIR, String(slot));
    try {
      const fd = openSync(lock, 'wx');
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return slot;
    } catch (err) {
      if (err.code !== 'EEXIST') throw err;
      const owner = Number(readSafe(lock)) || 0;
      if (owner && !pidAlive(owner)) rmSync(lock, { force: true }); // a dead process's claim; try the next slot
    }
  }
  throw new Error('no free /30 left in 10.213.0.0/16');
}

function killNamespace(ns) {
  for (let round = 0; round < 20; round++) {
    const pids = namespacePids(ns);
    if (pids.length === 0) break;
    for (const pid of pids) signal(pid, false, round < 5 ? 'SIGTERM' : 'SIGKILL');
    sleepSync(100);
  }
  try {
    ip(['netns', 'del', ns]);
  } catch (err) {
    if (listNamespaces().includes(ns)) say(`could not delete namespace ${ns}: ${err.message.split('\n')[0]}`);
  }
}

/** Namespaces, cgroups and temp dirs left by bench runs that died without cleaning up. */
export function removeLeftovers(cgroupMount) {
  for (const ns of listNamespaces()) {
    const m = /^fbench-(\d+)-r\d+$/.exec(ns);
    if (m && !pidAlive(Number(m[1]))) {
      say(`removing namespace ${ns} of a dead bench run`);
      killNamespace(ns);
    }
  }
  if (cgroupMount) {
    for (const entry of readdirSync(cgroupMount)) {
      const m = /^ferry-bench-(\d+)$/.exec(entry);
      if (!m || pidAlive(Number(m[1]))) continue;
      say(`removing cgroup ${entry} of a dead bench run`);
      const dirs = [];
      const walk = (d) => {
        dirs.push(d);
        for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(join(d, e.name));
      };
      walk(join(cgroupMount, entry));
      for (const d of dirs.reverse()) {
        for (const pid of readSafe(join(d, 'cgroup.procs')).split('\n').map(Number).filter((p) => p > 0)) signal(pid, false, 'SIGKILL');
      }
      sleepSync(200);
      for (const d of dirs) {
        try {
          rmdirSync(d);
        } catch {
          /* reported by nothing: a later run tries again */
        }
      }
    }
  }
  for (const entry of readdirSync(tmpdir())) {
    const m = /^ferry-bench-(\d+)-/.exec(entry);
    if (m && !pidAlive(Number(m[1]))) rmSync(join(tmpdir(), entry), { recursive: true, force: true });
  }
}

/** Waits (bounded) for a TCP listener at host:port reachable from here. */
export async function waitTcp(host, port, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const ok = await new Promise((resolve) => {
      const s = connect({ host, port });
      const done = (v) => {
        s.destroy();
        resolve(v);
      };
      s.setTimeout(500, () => done(false));
      s.once('connect', () => done(true));
      s.once('error', () => done(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`${what}: nothing listening on ${host}:${port} after ${timeoutMs} ms`);
}

/** Waits (bounded) until something listens on 127.0.0.1:port inside namespace ns. */
export async function waitListenInNs(ns, port, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (sh('ip', ['netns', 'exec', ns, 'ss', '-Hltn', `sport = :${port}`]).trim()) return;
    await sleep(50);
  }
  throw new Error(`${what}: nothing listening on ${ns}'s port ${port} after ${timeoutMs} ms`);
}

/**
 * n remotes r1…rn: a namespace each behind a veth pair with an address from 10.213.0.0/16, its own
 * sshd (root login by a throwaway key), an ssh_config naming them, and a known_hosts. Processes are
 * started through `procs` (so they are stopped with the rest) into the remote sshd cgroup.
 */
export class NsCluster {
  constructor(dir) {
    this.dir = dir;
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    this.remotes = [];
    this.slots = [];
    this.sshConfig = join(dir, 'ssh_config');
    this.knownHosts = join(dir, 'known_hosts');
    this.userKey = join(dir, 'id_ed25519');
  }

  async start(n, procs, accounting) {
    const keygen = (path) => sh('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path]);
    keygen(this.userKey);
    writeFileSync(join(this.dir, 'authorized_keys'), readFileSync(`${this.userKey}.pub`));
    mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
    const blocks = [];
    const known = [];
    for (let i = 1; i <= n; i++) {
      const name = `r${i}`;
      const ns = `fbench-${process.pid}-r${i}`;
      const veth = `fb-${process.pid.toString(36)}-${i}`;
      const slot = claimSlot((process.pid * 131 + i * 17) % SLOT_COUNT);
      this.slots.push(slot);
      const addr = slotAddresses(slot);
      const rdir = join(this.dir, name);
      mkdirSync(rdir);
      chmodSync(rdir, 0o755);
      ip(['netns', 'add', ns]);
      const remote = { name, ns, veth, address: addr.remote, dir: rdir };
      this.remotes.push(remote);
      ip(['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      ip(['addr', 'add', `${addr.host}/30`, 'dev', veth]);
      ip(['link', 'set', veth, 'up']);
      ip(['-n', ns, 'addr', 'add', `${addr.remote}/30`, 'dev', 'eth0']);
      ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
      ip(['-n', ns, 'link', 'set', 'lo', 'up']);
      keygen(join(rdir, 'host_key'));
      // Sessions get an empty HOME: the login user's shell start-up files (bash reads ~/.bashrc for
      // every `ssh host command`; on this machine root's runs pyenv init, ~2.5 s of CPU) are that
      // machine's, not distcc's, and would otherwise swamp distcc's ssh mode, one shell per job.
      mkdirSync(join(rdir, 'home'), { recursive: true });
      writeFileSync(join(rdir, 'sshd_config'), [
        'Port 22', `ListenAddress ${addr.remote}`, `HostKey ${join(rdir, 'host_key')}`, `PidFile ${join(rdir, 'sshd.pid')}`,
        'PermitRootLogin prohibit-password', 'PubkeyAuthentication yes', 'PasswordAuthentication no', 'KbdInteractiveAuthentication no',
        `AuthorizedKeysFile ${join(this.dir, 'authorized_keys')}`, 'UsePAM no', 'StrictModes no', 'UseDNS no',
        'AllowTcpForwarding yes', 'AllowStreamLocalForwarding yes', 'X11Forwarding no', 'PrintMotd no', 'LogLevel ERROR',
        `SetEnv HOME=${join(rdir, 'home')}`, '',
      ].join('\n'));
      const id = [`  HostName ${addr.remote}`, '  User root', `  IdentityFile ${this.userKey}`, '  IdentitiesOnly yes',
        `  UserKnownHostsFile ${this.knownHosts}`, '  GlobalKnownHostsFile /dev/null', '  StrictHostKeyChecking yes', '  BatchMode yes'];
      blocks.push([`Host ${name}`, ...id, ''].join('\n'));
      // distcc's `@host` mode: the same remote under another alias, multiplexed over one master connection.
      blocks.push([`Host ${name}-cm`, ...id, '  ControlMaster auto', `  ControlPath ${join(this.dir, `cm-${name}`)}`, '  ControlPersist no', ''].join('\n'));
      known.push(`${addr.remote} ${readFileSync(join(rdir, 'host_key.pub'), 'utf8').trim().split(/\s+/).slice(0, 2).join(' ')}`);
    }
    writeFileSync(this.sshConfig, blocks.join('\n'));
    writeFileSync(this.knownHosts, `${known.join('\n')}\n`);
    for (const r of this.remotes) {
      const d = await procs.daemon(`sshd ${r.name}`, ['ip', 'netns', 'exec', r.ns, '/usr/sbin/sshd', '-D', '-e', '-f', join(r.dir, 'sshd_config')], {
        cgroupProcs: accounting.procs('remote', 'sshd'), log: join(r.dir, 'sshd.log'),
      });
      accounting.kind === 'proc' && accounting.register('remote', 'sshd', d.pid);
      await waitTcp(r.address, 22, 10_000, `sshd ${r.name}`);
    }
    return this.remotes;
  }

  /** Starts argv inside remote r's namespace as a daemon of `procs`. */
  spawnIn(procs, r, name, argv, opts) {
    return procs.daemon(`${name} ${r.name}`, ['ip', 'netns', 'exec', r.ns, ...argv], opts);
  }

  /** Synchronous: whatever still runs in the namespaces, the namespaces (and their veths), the address claims. */
  cleanup() {
    for (const r of this.remotes) killNamespace(r.ns);
    for (const r of this.remotes) {
      try {
        if (ip(['-o', 'link', 'show']).includes(`${r.veth}@`)) ip(['link', 'del', r.veth]);
      } catch {
        /* gone with its namespace */
      }
    }
    for (const slot of this.slots) rmSync(join(SLOT_LOCK_DIR, String(slot)), { force: true });
    this.remotes = [];
    this.slots = [];
  }
}

// ---------------------------------------------------------------------------------------------
// Statistics and formatting
// ---------------------------------------------------------------------------------------------
export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}
export function summary(xs) {
  const v = xs.filter((x) => Number.isFinite(x));
  if (v.length === 0) return undefined;
  return { median: median(v), min: Math.min(...v), max: Math.max(...v), n: v.length };
}
/** "1.23 [1.10..1.40]" with fmt for each number; a single run prints just the value. */
export function cell(s, fmt) {
  if (!s) return '–';
  return s.n === 1 || s.min === s.max ? fmt(s.median) : `${fmt(s.median)} [${fmt(s.min)}..${fmt(s.max)}]`;
}
export function fmtMs(us) {
  const ms = us / 1000;
  return ms >= 100 ? `${ms.toFixed(0)} ms` : ms >= 10 ? `${ms.toFixed(1)} ms` : `${ms.toFixed(2)} ms`;
}
/** CPU of a process's own threads (not its children), in microseconds, from /proc/PID/stat (10 ms ticks). */
export function processCpuUs(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1e6) / CLK_TCK;
}

export function fmtS(us) {
  const s = us / 1e6;
  return s >= 10 ? `${s.toFixed(1)} s` : `${s.toFixed(2)} s`;
}
export const fmtRatio = (x) => `${x.toFixed(2)}×`;
export const fmtNum = (x) => (x >= 100 ? x.toFixed(0) : x.toFixed(1));
