// `npm run bench`: Ferry against distcc on the same simulated cluster, measured side by side.
//   npm run bench [-- --runs N] [--quick] [--slots N] [--only a,b,c,d,scaling,rss] [--accounting proc]
//                 [--modes ferry,distcc-L,distcc-ssh,local] [--distcc-tunnel session|plain] [--timeout SECONDS]
// Needs root (network namespaces, cgroups). From a fresh clone it installs what it runs from Debian's
// archive (distcc, ccache, cmake, ninja, openssh-server, iproute2, dpkg-dev), runs `npm ci` and builds
// Ferry when they are missing. Prints markdown tables and writes them to test/bench/results/latest.md.
//
// The cluster: remotes r1…r4, each a network namespace with its own sshd, a ferry-worker and a distccd,
// both listening only on the namespace's 127.0.0.1 (so only SSH reaches them). The initiator is this
// machine: Ferry's coordinator (one ssh2 connection per host), distcc through `ssh -L` forwards, and
// distcc's own `@host` mode (one `ssh host distccd --inetd` per job over a ControlMaster connection).
// CPU per side comes from cgroup v2 cpu.stat (else /proc), but every side runs on the same cores.
import { execFileSync } from 'node:child_process';
import {
  chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync,
} from 'node:fs';
import { availableParallelism, release, tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServer } from 'node:net';
import {
  buildHelpers, CgroupAccounting, cell, findCgroup2, machineBusyUs, fmtMs, fmtNum, fmtRatio, fmtS, NsCluster, ProcAccounting, Processes, readSafe,
  processCpuUs, removeLeftovers, say, sleep, summary, waitListenInNs, waitTcp,
} from './lib.mjs';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const FERRY = join(REPO, 'dist', 'bin', 'ferry');
const CLI = join(REPO, 'dist', 'cli', 'main.js');
const WORKER = join(REPO, 'dist', 'worker', 'main.js');
const RESULTS = join(REPO, 'test', 'bench', 'results');
const CACHE = '/var/cache/ferry-bench';
const SAMPLE = join(REPO, 'test', 'fixtures', 'sample');
const WORKER_PORT = 3633;
const DISTCCD_PORT = 3632;
const NPROC = availableParallelism();

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------
const USAGE = 'usage: npm run bench -- [--runs N] [--quick] [--slots N] [--only a,b,c,d,scaling,rss] [--accounting proc] ' +
  '[--modes ferry,distcc-L,distcc-ssh,local] [--distcc-tunnel session|plain] [--timeout SECONDS] [--coordinator-profile DIR] [--node-flags "FLAGS"]';
const ALL_MODES = ['ferry', 'distcc-L', 'distcc-ssh', 'local'];
const opts = { runs: undefined, quick: false, slots: 8, only: undefined, modes: undefined, accounting: 'auto', tunnel: 'session', timeout: undefined, profileDir: undefined, nodeFlags: [] };
{
  const argv = process.argv.slice(2);
  const value = (i) => {
    if (argv[i].includes('=')) return [argv[i].slice(argv[i].indexOf('=') + 1), i];
    if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value`);
    return [argv[i + 1], i + 1];
  };
  try {
    for (let i = 0; i < argv.length; i++) {
      const flag = argv[i].split('=')[0];
      let v;
      if (flag === '--quick') opts.quick = true;
      else if (flag === '--runs') ([v, i] = value(i), (opts.runs = Number(v)));
      else if (flag === '--slots') ([v, i] = value(i), (opts.slots = Number(v)));
      else if (flag === '--only') ([v, i] = value(i), (opts.only = new Set(v.split(','))));
      // Fewer modes for a quicker look at one of them (the ratios need ferry and distcc-L).
      else if (flag === '--modes') ([v, i] = value(i), (opts.modes = new Set(v.split(','))));
      else if (flag === '--accounting') ([v, i] = value(i), (opts.accounting = v));
      else if (flag === '--distcc-tunnel') ([v, i] = value(i), (opts.tunnel = v));
      else if (flag === '--timeout') ([v, i] = value(i), (opts.timeout = Number(v)));
      // node --cpu-prof for the coordinator (its log, with --trace-gc, copied beside it) and the
      // workers (worker-<remote>/): one .cpuprofile per process, written as it stops.
      else if (flag === '--coordinator-profile') ([v, i] = value(i), (opts.profileDir = resolve(v)));
      // More node flags for the coordinator and the workers, e.g. --perf-basic-prof for `perf record`.
      else if (flag === '--node-flags') ([v, i] = value(i), (opts.nodeFlags = v.split(/\s+/).filter(Boolean)));
      else if (flag === '--help' || flag === '-h') {
        console.log(USAGE);
        process.exit(0);
      } else throw new Error(`unknown option ${argv[i]}`);
    }
    opts.runsGiven = opts.runs !== undefined;
    opts.runs ??= opts.quick ? 1 : 3;
    opts.timeout ??= opts.quick ? 600 : 2400;
    if (!Number.isInteger(opts.runs) || opts.runs < 1 || opts.runs > 50) throw new Error('--runs must be 1..50');
    if (!Number.isInteger(opts.slots) || opts.slots < 1 || opts.slots > 64) throw new Error('--slots must be 1..64');
    if (!['auto', 'cgroup', 'proc'].includes(opts.accounting)) throw new Error('--accounting must be cgroup or proc');
    if (!['session', 'plain'].includes(opts.tunnel)) throw new Error('--distcc-tunnel must be session or plain');
    if (!(opts.timeout > 0)) throw new Error('--timeout must be a positive number of seconds');
    for (const m of opts.modes ?? []) if (!ALL_MODES.includes(m)) throw new Error(`--modes: unknown mode ${m}`);
    for (const p of opts.only ?? []) if (!['a', 'b', 'c', 'd', 'scaling', 'rss'].includes(p)) throw new Error(`--only: unknown part ${p}`);
  } catch (err) {
    console.error(`bench: ${err.message}\n${USAGE}`);
    process.exit(2);
  }
}
const want = (part) => !opts.only || opts.only.has(part);
const Q = opts.quick;
// --quick: one run, and distcc's ssh mode (about 1 s per job) only in (a).
const CFG = {
  trivialJobs: Q ? 3 : 8,
  // One heavy compile varies by a third from run to run on a shared VM: several per run, per job.
  heavyJobs: Q ? 1 : 3,
  smallFiles: 200,
  jobs: 16,
  smallModes: Q ? ['ferry', 'distcc-L', 'local'] : ['ferry', 'distcc-L', 'distcc-ssh', 'local'],
  leveldbModes: Q ? ['ferry', 'distcc-L', 'local'] : ['ferry', 'distcc-L', 'distcc-ssh', 'local'],
  cpp2Variants: Q ? [true] : [true, false],
  scalingWorkers: Q ? [1, 4] : [1, 2, 4],
  scalingJ: Q ? [] : [8, 16, 64],
  // No target is a ratio against these: measured in the first run only, which keeps a full run
  // within 20 minutes (distcc's ssh mode costs about 1 s per job).
  onceModes: ['distcc-ssh', 'local'],
  // The scaling grid is the longest part; its points get at most two runs.
  scalingRuns: Math.min(opts.runs, 2),
  // (a) and (b), which the targets are measured on, are short: five runs each for steadier medians
  // (distcc's jobs/s on (b) moves by a sixth from run to run here), unless --runs says otherwise.
  targetRuns: opts.runsGiven || Q ? opts.runs : 5,
};

// ---------------------------------------------------------------------------------------------
// State and cleanup (synchronous, so it also runs from the overall timer and from signals)
// ---------------------------------------------------------------------------------------------
let procs;
let accounting;
let cluster;
let tmp;
let aptSourcesFile;
let cleaned = false;
function cleanup() {
  if (cleaned) return;
  cleaned = true;
  say('stopping everything');
  const step = (what, f) => {
    try {
      f();
    } catch (err) {
      say(`cleanup: ${what}: ${err.message}`);
    }
  };
  step('processes', () => procs?.stopAll());
  step('namespaces', () => cluster?.cleanup());
  step('cgroups', () => accounting?.cleanup());
  step('apt source list', () => aptSourcesFile && rmSync(aptSourcesFile, { force: true }));
  step('coordinator logs', () => {
    if (!opts.profileDir || !tmp || !existsSync(tmp)) return;
    for (const f of readdirSync(tmp).filter((n) => n.startsWith('coordinator-'))) writeFileSync(join(opts.profileDir, f), readFileSync(join(tmp, f)));
  });
  step('temp dir', () => tmp && rmSync(tmp, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 }));
}
const overall = setTimeout(() => {
  say(`FAILED: still running after ${opts.timeout} s (--timeout); stopping everything`);
  cleanup();
  process.exit(1);
}, opts.timeout * 1000);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => {
    say(`${sig}: stopping everything`);
    cleanup();
    process.exit(130);
  });
}

// ---------------------------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------------------------
const HELLO_C = '#include <stdio.h>\n\nint main(void) {\n  printf("hello, world\\n");\n  return 0;\n}\n';
const HEAVY_CC = `#include <algorithm>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <regex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

struct Record { std::string key; std::vector<int> values; };

static std::map<std::string, int> countWords(const std::string &text) {
  std::map<std::string, int> counts;
  std::regex word("[A-Za-z_][A-Za-z0-9_]*");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), word); it != std::sregex_iterator(); ++it) counts[it->str()]++;
  return counts;
}

static std::vector<Record> parse(std::istream &in) {
  std::vector<Record> out;
  std::regex line(R"(^\\s*(\\w+)\\s*=\\s*([0-9, ]+)$)");
  std::string s;
  while (std::getline(in, s)) {
    std::smatch m;
    if (!std::regex_match(s, m, line)) continue;
    Record r{m[1], {}};
    std::stringstream nums(m[2]);
    std::string n;
    while (std::getline(nums, n, ',')) r.values.push_back(std::stoi(n));
    out.push_back(std::move(r));
  }
  return out;
}

int main() {
  std::stringstream in("a = 1, 2, 3\\nb = 4, 5\\nbad line\\nc = 6");
  auto records = parse(in);
  std::unordered_map<std::string, std::shared_ptr<Record>> index;
  for (auto &r : records) index[r.key] = std::make_shared<Record>(r);
  std::sort(records.begin(), records.end(), [](const Record &x, const Record &y) { return x.values.size() > y.values.size(); });
  for (const auto &r : records) std::cout << r.key << ' ' << std::accumulate(r.values.begin(), r.values.end(), 0) << '\\n';
  for (const auto &[w, n] : countWords("the quick brown fox jumps over the lazy dog the end")) std::cout << w << ':' << n << '\\n';
  return index.size() == 3 ? 0 : 1;
}
`;
const SMALL_H = `#ifndef COMMON_H
#define COMMON_H
#include <stddef.h>
struct item { const char *name; int weight; struct item *next; };
static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }
int unit_entry(int which);
#endif
`;
function smallC(i) {
  return `#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common.h"

static int table_${i}[64];

static unsigned hash_${i}(const char *s) {
  unsigned h = ${2166136261 + i}u;
  while (*s) h = (h ^ (unsigned char)*s++) * 16777619u;
  return h;
}

int unit_${i}(const char *text, struct item *items, size_t n) {
  char buf[128];
  snprintf(buf, sizeof buf, "%s-%d", text, ${i});
  int sum = 0;
  for (size_t k = 0; k < n; k++) {
    table_${i}[k % 64] += items[k].weight;
    sum += clampi(items[k].weight * ${i % 7 + 1}, -1000, 1000);
    if (strcmp(items[k].name, buf) == 0) sum ^= (int)hash_${i}(buf);
  }
  char *copy = malloc(strlen(buf) + 1);
  if (!copy) return -1;
  strcpy(copy, buf);
  sum += (int)strlen(copy);
  free(copy);
  return sum;
}
`;
}
const SMALL_MAKEFILE = `BUILD ?= build
SRCS := $(sort $(wildcard src/*.c))
OBJS := $(patsubst src/%.c,$(BUILD)/%.o,$(SRCS))
all: $(OBJS)
$(BUILD)/%.o: src/%.c src/common.h | $(BUILD)
\t$(CC) -O2 -Wall -Isrc -c $< -o $@
$(BUILD):
\tmkdir -p $@
`;

/** leveldb from Debian's sources, fetched once into the cache; else the sample project, labelled. */
function ensureLeveldb() {
  mkdirSync(CACHE, { recursive: true });
  const found = () => readdirSync(CACHE).find((e) => /^leveldb-[\d.]+$/.test(e) && existsSync(join(CACHE, e, 'CMakeLists.txt')));
  if (found()) return { dir: join(CACHE, found()), name: `leveldb ${found().slice('leveldb-'.length)} (Debian source)` };
  say(`fetching leveldb's Debian source into ${CACHE} (once)`);
  const work = join(CACHE, `fetch-${process.pid}`);
  const lists = join(work, 'lists');
  mkdirSync(join(lists, 'partial'), { recursive: true });
  mkdirSync(join(work, 'cache', 'archives', 'partial'), { recursive: true });
  mkdirSync(join(work, 'src'));
  aptSourcesFile = '/etc/apt/sources.list.d/ferry-bench-src.list';
  writeFileSync(aptSourcesFile, '# temporary, written and removed by Ferry\'s test/bench/run.mjs\ndeb-src http://deb.debian.org/debian bookworm main\n');
  // Only our list, and apt's lists and caches kept in our own directory: the system's apt state is not touched.
  const aptOpts = ['-o', `Dir::Etc::SourceList=${aptSourcesFile}`, '-o', 'Dir::Etc::SourceParts=-', '-o', `Dir::State::Lists=${lists}`,
    '-o', `Dir::Cache=${join(work, 'cache')}`, '-o', 'APT::Get::List-Cleanup=0', '-o', 'APT::Sandbox::User=root', '-q'];
  try {
    execFileSync('apt-get', [...aptOpts, 'update'], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 180_000 });
    execFileSync('apt-get', [...aptOpts, 'source', 'leveldb'], { cwd: join(work, 'src'), stdio: ['ignore', 'ignore', 'pipe'], timeout: 300_000 });
    const dir = readdirSync(join(work, 'src')).find((e) => /^leveldb-[\d.]+$/.test(e));
    if (!dir) throw new Error('apt-get source leveldb left no leveldb-<version> directory');
    renameSync(join(work, 'src', dir), join(CACHE, dir));
  } catch (err) {
    const why = `${err.message.split('\n')[0]} ${(err.stderr ?? '').toString().trim().split('\n').slice(-2).join(' ')}`.trim();
    say(`cannot get leveldb's source (${why}); using test/fixtures/sample instead`);
    return { dir: SAMPLE, name: 'test/fixtures/sample (FALLBACK: leveldb source unavailable)', fallback: why };
  } finally {
    rmSync(aptSourcesFile, { force: true });
    aptSourcesFile = undefined;
    rmSync(work, { recursive: true, force: true });
  }
  return { dir: join(CACHE, found()), name: `leveldb ${found().slice('leveldb-'.length)} (Debian source)` };
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------
function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}
function listObjects(dir) {
  const out = [];
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.o')) out.push(relative(dir, p));
    }
  };
  if (existsSync(dir)) walk(dir);
  return out.sort();
}
/** Every object of `dir` must exist in `ref` with the same bytes, and the same set of objects. */
function compareObjects(what, dir, ref, only) {
  const a = only ?? listObjects(ref);
  const b = listObjects(dir);
  if (a.length === 0) throw new Error(`${what}: the local reference build ${ref} has no objects`);
  const problems = [];
  for (const rel of a) {
    if (!existsSync(join(dir, rel))) problems.push(`${rel} missing`);
    else if (!readFileSync(join(dir, rel)).equals(readFileSync(join(ref, rel)))) problems.push(`${rel} differs`);
  }
  if (!only) for (const rel of b) if (!a.includes(rel)) problems.push(`${rel} extra`);
  if (problems.length) {
    throw new Error(`OBJECTS DIFFER from the local build: ${what}: ${problems.length} of ${a.length}: ${problems.slice(0, 8).join(', ')}` +
      ` (${dir} against ${ref})`);
  }
  return a.length;
}
function countCompileOk(files) {
  return files.reduce((n, f) => n + (readSafe(f).match(/COMPILE_OK/g) ?? []).length, 0);
}
/**
 * Jobs the ferry-workers ran as cc1 and as without gcc's driver, those of them piped, and those
 * forked from started copies (their job log lines say so).
 */
function countWorkerDirect(files) {
  const counts = { direct: 0, piped: 0, forked: 0 };
  for (const f of files) {
    for (const [, how, forked] of readSafe(f).matchAll(/\(cc1 (and|piped into) as, without the driver(, forked)?\)$/gm)) {
      counts.direct++;
      if (how === 'piped into') counts.piped++;
      if (forked) counts.forked++;
    }
  }
  return counts;
}
function rmObjects(dir) {
  for (const rel of listObjects(dir)) rmSync(join(dir, rel));
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------
const phases = [];
let phaseStart = Date.now();
function phase(name) {
  const now = Date.now();
  if (phases.length) phases[phases.length - 1].s = (now - phaseStart) / 1000;
  phases.push({ name, s: 0 });
  phaseStart = now;
  say(`=== ${name}`);
}
const results = {}; // filled by the workloads, read by the report
const notes = [];

/** Debian packages the bench runs (the tests' own come from .ci/run), by the binary that tells they are there. */
const BENCH_PACKAGES = {
  '/usr/bin/distcc': 'distcc', '/usr/bin/distccd': 'distcc', '/usr/bin/ccache': 'ccache', '/usr/sbin/sshd': 'openssh-server',
  '/usr/bin/ssh': 'openssh-client', '/usr/bin/cmake': 'cmake', '/usr/bin/ninja': 'ninja-build', '/usr/bin/make': 'make',
  '/usr/bin/gcc': 'gcc', '/usr/bin/g++': 'g++', '/usr/bin/ip': 'iproute2', '/usr/bin/ss': 'iproute2', '/usr/bin/dpkg-source': 'dpkg-dev',
};

/** A fresh clone on a fresh machine: installs what is missing from Debian's archive, then builds Ferry when dist/ is not there. */
function installPrerequisites() {
  const missing = [...new Set(Object.entries(BENCH_PACKAGES).filter(([bin]) => !existsSync(bin)).map(([, pkg]) => pkg))];
  if (missing.length) {
    say(`installing ${missing.join(' ')} (apt-get)`);
    const aptEnv = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    execFileSync('apt-get', ['-qq', 'update'], { stdio: ['ignore', 'ignore', 'inherit'], env: aptEnv, timeout: 300_000 });
    execFileSync('apt-get', ['-qq', 'install', '-y', '--no-install-recommends', ...missing], { stdio: ['ignore', 'ignore', 'inherit'], env: aptEnv, timeout: 900_000 });
  }
  // sshd's privilege separation directory (a packaged sshd normally gets it from systemd).
  mkdirSync('/run/sshd', { recursive: true });
  if (!existsSync(join(REPO, 'node_modules'))) {
    say('installing the npm dependencies (npm ci)');
    execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: REPO, stdio: ['ignore', 'ignore', 'inherit'], timeout: 900_000 });
  }
  if (![FERRY, CLI, WORKER].every((f) => existsSync(f))) {
    say('building Ferry (npm run build)');
    execFileSync(process.execPath, [join(REPO, 'cli', 'build.mjs')], { cwd: REPO, stdio: ['ignore', 'ignore', 'inherit'], timeout: 600_000 });
  }
}

async function main() {
  const started = new Date();
  phase('setup');
  // ---- prerequisites ----
  if (process.getuid?.() !== 0) throw new Error('needs root (network namespaces, cgroups)');
  installPrerequisites();
  for (const need of [FERRY, CLI, WORKER, ...Object.keys(BENCH_PACKAGES)]) {
    if (!existsSync(need)) throw new Error(`${need} is missing after installing and building (see the lines above)`);
  }
  const cg = opts.accounting === 'proc' ? { mount: undefined, notes: ['--accounting proc given'] } : findCgroup2();
  if (!cg.mount && opts.accounting === 'cgroup') throw new Error(`no usable cgroup2: ${cg.notes.join('; ')}`);
  removeLeftovers(cg.mount);
  tmp = mkdtempSync(join(tmpdir(), `ferry-bench-${process.pid}-`));
  chmodSync(tmp, 0o755); // distccd drops root and must reach its log files
  const helpers = buildHelpers(tmp);
  procs = new Processes(helpers.benchExec);
  if (cg.mount) {
    accounting = new CgroupAccounting(cg.mount);
    results.accounting = `cgroup v2 cpu.stat (usage_usec) in ${accounting.root}` + (cg.notes.length ? `; ${cg.notes.join('; ')}` : '');
  } else {
    accounting = new ProcAccounting();
    results.accounting = `/proc (FALLBACK, no usable cgroup2: ${cg.notes.join('; ')}): daemon trees' utime+stime incl. reaped children; ` +
      'builds by wait4 rusage of every process they waited for';
  }
  say(`CPU accounting: ${results.accounting}`);

  const baseEnv = { ...process.env };
  for (const k of Object.keys(baseEnv)) if (/^(FERRY_|DISTCC_|CCACHE_)/.test(k)) delete baseEnv[k];
  delete baseEnv.NODE_EXTRA_CA_CERTS; // Node parses the whole CA bundle at every start when it is set
  delete baseEnv.MAKEFLAGS;
  delete baseEnv.MFLAGS;

  // ---- sources ----
  const W = join(tmp, 'w');
  mkdirSync(join(W, 'a', 'ref'), { recursive: true });
  writeFileSync(join(W, 'a', 'hello.c'), HELLO_C);
  writeFileSync(join(W, 'a', 'heavy.cc'), HEAVY_CC);
  // heavy.cc's compile shape (g++ -O2 -c) for the warm-up, at a fraction of its cost.
  writeFileSync(join(W, 'a', 'shape.cc'), 'int shape() { return 1; }\n');
  mkdirSync(join(W, 'b', 'src'), { recursive: true });
  writeFileSync(join(W, 'b', 'Makefile'), SMALL_MAKEFILE);
  writeFileSync(join(W, 'b', 'src', 'common.h'), SMALL_H);
  for (let i = 0; i < CFG.smallFiles; i++) writeFileSync(join(W, 'b', 'src', `f${String(i).padStart(3, '0')}.c`), smallC(i));
  const needLeveldb = want('c') || want('d');
  const project = needLeveldb ? ensureLeveldb() : undefined;
  results.project = project;

  // ---- cluster ----
  const nRemotes = want('scaling') ? Math.max(2, ...CFG.scalingWorkers) : 2;
  cluster = new NsCluster(join(tmp, 'cluster'));
  const remotes = await cluster.start(nRemotes, procs, accounting);
  const S = opts.slots;
  // `ip netns exec` execs the worker: these are the Node processes themselves (their compilers excluded).
  const workerPids = [];
  const reg = (side, leaf, d) => accounting.kind === 'proc' && accounting.register(side, leaf, d.pid);
  for (const r of remotes) {
    for (const f of ['distccd.log', 'distccd-inetd.log']) {
      writeFileSync(join(r.dir, f), '');
      chmodSync(join(r.dir, f), 0o666);
    }
    writeFileSync(join(r.dir, 'distccd-inetd'),
      `#!/bin/sh\nexec /usr/bin/distccd "$@" --nice 0 --log-file ${join(r.dir, 'distccd-inetd.log')} --log-level info\n`);
    chmodSync(join(r.dir, 'distccd-inetd'), 0o755);
    const workerProfile = [...opts.nodeFlags, ...(opts.profileDir ? ['--cpu-prof', `--cpu-prof-dir=${join(opts.profileDir, `worker-${r.name}`)}`] : [])];
    const worker = await cluster.spawnIn(procs, r, 'ferry-worker', [process.execPath, ...workerProfile, WORKER, '--no-config', '--listen', `127.0.0.1:${WORKER_PORT}`, '--slots', String(S)], {
      env: baseEnv, cgroupProcs: accounting.procs('remote', 'ferry'), log: join(r.dir, 'worker.log'), ready: /listening on/,
    });
    reg('remote', 'ferry', worker);
    workerPids.push(worker.pid);
    // Ferry's worker does not renice its compilers; distccd renices by 5 by default, which on shared cores
    // would hand the initiator's work priority over distcc's compiles only: --nice 0 for a fair comparison.
    reg('remote', 'distccd', await cluster.spawnIn(procs, r, 'distccd', ['/usr/bin/distccd', '--daemon', '--no-detach', '--allow', '127.0.0.1',
      '--listen', '127.0.0.1', '--port', String(DISTCCD_PORT), '--jobs', String(S), '--nice', '0', '--log-file', join(r.dir, 'distccd.log'),
      '--log-level', 'info'], { env: baseEnv, cgroupProcs: accounting.procs('remote', 'distccd'), log: join(r.dir, 'distccd.out') }));
    await waitListenInNs(r.ns, DISTCCD_PORT, 10_000, `distccd ${r.name}`);
  }

  // ---- initiator daemons ----
  const tunnels = [];
  for (const r of remotes) {
    const port = await freePort();
    // `session`: the forward's connection also carries one idle session (`cat`), because sshd turns
    // TCP_NODELAY on only when a session opens; `plain` is the usual `ssh -N -L`.
    const argv = ['ssh', '-F', cluster.sshConfig, '-o', 'ExitOnForwardFailure=yes', '-L', `127.0.0.1:${port}:127.0.0.1:${DISTCCD_PORT}`];
    const d = await procs.daemon(`ssh -L ${r.name}`, opts.tunnel === 'session' ? [...argv, '-T', r.name, 'cat'] : [...argv, '-N', r.name], {
      env: baseEnv, cgroupProcs: accounting.procs('initiator', 'distcc-L'), log: join(tmp, `ssh-L-${r.name}.log`), stdin: 'pipe',
    });
    reg('initiator', 'distcc-L', d);
    await waitTcp('127.0.0.1', port, 10_000, `ssh -L to ${r.name}`);
    tunnels.push(port);
    const m = await procs.daemon(`ssh ControlMaster ${r.name}`, ['ssh', '-F', cluster.sshConfig, '-M', '-N', `${r.name}-cm`], {
      env: baseEnv, cgroupProcs: accounting.procs('initiator', 'distcc-ssh'), log: join(tmp, `ssh-cm-${r.name}.log`),
      ready: async () => existsSync(join(cluster.dir, `cm-${r.name}`)),
    });
    reg('initiator', 'distcc-ssh', m);
  }
  const distccSsh = helpers.sshWrapper(cluster.sshConfig, 'ssh-wrapper');
  mkdirSync(join(tmp, 'distcc-L'));
  mkdirSync(join(tmp, 'distcc-ssh'));
  const ferryRuntime = join(tmp, 'ferry-runtime');
  mkdirSync(ferryRuntime, { mode: 0o700 });
  const hostsOf = (n) => remotes.slice(0, n);
  const env = {
    local: () => ({ ...baseEnv }),
    ferry: (n = 2) => ({
      // FERRY_NODE=/bin/false: should our coordinator be gone, the launcher cannot start one of its own
      // (outside our accounting and cleanup); it compiles locally, and the job count check fails loudly.
      ...baseEnv, FERRY_NODE: '/bin/false', FERRY_RUNTIME_DIR: ferryRuntime, FERRY_STATE_DIR: join(tmp, 'ferry-state'), FERRY_SSH_CONFIG: cluster.sshConfig,
      FERRY_HOSTS: hostsOf(n).map((r) => `${r.name}/${S}`).join(' '),
    }),
    'distcc-L': (n = 2) => ({
      ...baseEnv, DISTCC_DIR: join(tmp, 'distcc-L'), DISTCC_FALLBACK: '0', DISTCC_HOSTS: tunnels.slice(0, n).map((p) => `127.0.0.1:${p}/${S}`).join(' '),
    }),
    'distcc-ssh': (n = 2) => ({
      ...baseEnv, DISTCC_DIR: join(tmp, 'distcc-ssh'), DISTCC_FALLBACK: '0', DISTCC_SSH: distccSsh,
      DISTCC_HOSTS: hostsOf(n).map((r) => `@${r.name}-cm/${S}:${join(r.dir, 'distccd-inetd')}`).join(' '),
    }),
  };
  const ferryCli = (args) => JSON.parse(execFileSync(process.execPath, [CLI, ...args], { env: env.ferry(), timeout: 20_000 }).toString());
  let coordinator;
  let coordinatorLog;
  let coordinatorStarts = 0;
  async function startCoordinator() {
    coordinatorLog = join(tmp, `coordinator-${++coordinatorStarts}.log`);
    const profile = [...opts.nodeFlags, ...(opts.profileDir ? ['--cpu-prof', `--cpu-prof-dir=${opts.profileDir}`, '--trace-gc'] : [])];
    // The heap flag the launcher starts the coordinator with (COORDINATOR_HEAP_FLAG in launcher.c).
    coordinator = await procs.daemon('ferry coordinator', [process.execPath, '--initial-old-space-size=64', ...profile, CLI, 'coordinator', '--foreground'], {
      env: env.ferry(), cgroupProcs: accounting.procs('initiator', 'ferry'), log: coordinatorLog, ready: /listening on/,
    });
    if (accounting.kind === 'proc') accounting.roots.initiator.ferry = [coordinator.pid];
  }
  await startCoordinator();

  const MODES = {
    local: { label: 'local', init: [], remote: [], cc: (c) => [c] },
    ferry: { label: 'ferry', init: ['ferry'], remote: ['sshd', 'ferry'], cc: (c) => [FERRY, c] },
    'distcc-L': { label: 'distcc, ssh -L', init: ['distcc-L'], remote: ['sshd', 'distccd'], cc: (c) => ['distcc', c] },
    'distcc-ssh': { label: 'distcc @host ssh', init: ['distcc-ssh'], remote: ['sshd'], cc: (c) => ['distcc', c] },
  };
  const workerLogs = remotes.map((r) => join(r.dir, 'worker.log'));
  const compileOkFiles = {
    'distcc-L': remotes.map((r) => join(r.dir, 'distccd.log')),
    'distcc-ssh': remotes.map((r) => join(r.dir, 'distccd-inetd.log')),
  };

  /** Waits (bounded) until the coordinator reports the first n hosts up, sending trivial jobs to make it connect. */
  async function ferryHostsUp(n) {
    const e = env.ferry(n);
    const deadline = Date.now() + 30_000;
    for (let round = 0; ; round++) {
      await procs.run([FERRY, 'gcc', '-c', 'hello.c', '-o', join(tmp, 'warm.o')], { env: e, cwd: join(W, 'a'), log: join(tmp, 'warmup.log'), n: Math.max(2, n) });
      const st = ferryCli(['status', '--json']);
      const up = (st.hostStatus ?? []).filter((h) => h.state === 'up').map((h) => h.name);
      if (hostsOf(n).every((r) => up.includes(r.name))) return;
      if (Date.now() > deadline) throw new Error(`Ferry: hosts not up after 30 s: ${JSON.stringify(st.hostStatus?.map((h) => [h.name, h.state, h.lastError]))}`);
      await sleep(200 * (round + 1));
    }
  }

  /**
   * One measured command: CPU per side over it (the mode's cgroups only), wall, and the check that
   * exactly `expectRemote` jobs ran remotely (Ferry's stats, distccd's COMPILE_OK lines).
   */
  async function measure(mode, argv, { cwd, n = 1, expectRemote, hosts = 2, envOver = {}, what }) {
    const M = MODES[mode];
    const e = { ...env[mode](hosts), ...envOver };
    const usesFerry = mode === 'ferry' || e.CCACHE_PREFIX === FERRY;
    const distccLogs = compileOkFiles[mode];
    const stats0 = usesFerry ? ferryCli(['stats', '--json']) : undefined;
    const direct0 = usesFerry ? countWorkerDirect(workerLogs) : undefined;
    const ok0 = distccLogs ? countCompileOk(distccLogs) : 0;
    const s0 = accounting.snapshot();
    const m0 = machineBusyUs();
    const c0 = usesFerry ? processCpuUs(coordinator.pid) : 0;
    const workersCpu = () => workerPids.reduce((sum, pid) => sum + processCpuUs(pid), 0);
    const w0 = mode === 'ferry' ? workersCpu() : 0;
    const t0 = process.hrtime.bigint();
    const r = await procs.run(argv, { env: e, cwd, cgroupProcs: accounting.procs('initiator', 'jobs'), log: join(tmp, `${mode}.log`), n });
    const wallUs = Number(process.hrtime.bigint() - t0) / 1000;
    const m1 = machineBusyUs();
    const s1 = accounting.snapshot();
    // The coordinator's own threads, without the preprocessors its fork servers run (its children).
    const coordinatorUs = usesFerry ? processCpuUs(coordinator.pid) - c0 : undefined;
    // The workers' Node processes alone (not their compilers); with ccache in front these also run for ferry.
    const workerUs = mode === 'ferry' ? workersCpu() - w0 : undefined;
    const d = (side, leaf) => s1[side][leaf] - s0[side][leaf];
    const jobsUs = accounting.kind === 'cgroup' ? d('initiator', 'jobs') : r.childCpuUs;
    const initUs = jobsUs + M.init.reduce((s, l) => s + d('initiator', l), 0);
    const remoteUs = M.remote.reduce((s, l) => s + d('remote', l), 0);
    // Everything the machine did that none of our cgroups (any mode) accounts for: other users' work,
    // this harness, unattributed kernel time. Reported so a noisy machine shows in the results.
    const ours = jobsUs + Object.entries(s1.initiator).reduce((sum, [l, v]) => sum + (l === 'jobs' ? 0 : v - s0.initiator[l]), 0) +
      Object.entries(s1.remote).reduce((sum, [l, v]) => sum + v - s0.remote[l], 0);
    const foreign = Math.max(0, (m1 - m0 - ours) / (wallUs * NPROC));
    (results.foreign ??= []).push({ what, foreign });
    // One line per measurement, so a long run shows progress and how each run went.
    say(`  ${what} ${mode}: wall ${fmtS(wallUs)}, initiator CPU ${fmtS(initUs)} (daemons ${fmtS(initUs - jobsUs)}), remote CPU ${fmtS(remoteUs)}`);
    const out = {
      wallUs, initUs, remoteUs, walls: r.walls, clientUs: r.childCpuUs, ownUs: r.ownUs.reduce((a, b) => a + b, 0), foreign,
      // The build's own process tree against the mode's long-lived processes, on each side.
      initDaemonUs: initUs - jobsUs, remoteSshdUs: M.remote.includes('sshd') ? d('remote', 'sshd') : 0, coordinatorUs, workerUs,
    };
    if (usesFerry) {
      const stats1 = ferryCli(['stats', '--json']);
      const remote = stats1.jobs.remote - stats0.jobs.remote;
      const local = stats1.jobs.local - stats0.jobs.local;
      if (remote !== expectRemote || local !== 0) {
        throw new Error(`${what} (${mode}): Ferry ran ${remote} jobs remotely and ${local} locally, expected ${expectRemote} remotely; ` +
          `local reasons now ${JSON.stringify(stats1.local)}; see ${coordinatorLog}`);
      }
      out.bytes = { raw: stats1.bytes.sourceRaw - stats0.bytes.sourceRaw, sent: stats1.bytes.sourceSent - stats0.bytes.sourceSent };
      // How Ferry preprocessed: without gcc's driver, and how many jobs went round twice for exact messages.
      const direct1 = countWorkerDirect(workerLogs);
      out.how = {
        jobs: remote,
        direct: (stats1.jobs.preprocessedDirect ?? 0) - (stats0.jobs.preprocessedDirect ?? 0),
        forked: (stats1.jobs.preprocessedForked ?? 0) - (stats0.jobs.preprocessedForked ?? 0),
        reruns: (stats1.jobs.exactReruns ?? 0) - (stats0.jobs.exactReruns ?? 0),
        // The workers log a job after its reply went out: a last line may trail the build a little.
        compiledDirect: direct1.direct - direct0.direct,
        compiledPiped: direct1.piped - direct0.piped,
        compiledForked: direct1.forked - direct0.forked,
      };
      out.perHost = Object.fromEntries(Object.entries(stats1.hosts).map(([h, c]) => [h, c.jobs - (stats0.hosts[h]?.jobs ?? 0)]));
    }
    if (distccLogs) {
      // distccd logs a job's summary after the client has its result: give the last lines a moment (bounded).
      let ran = countCompileOk(distccLogs) - ok0;
      for (let waited = 0; ran < expectRemote && waited < 3000; waited += 50) {
        await sleep(50);
        ran = countCompileOk(distccLogs) - ok0;
      }
      if (ran !== expectRemote) {
        throw new Error(`${what} (${mode}): distccd logged ${ran} COMPILE_OK, expected ${expectRemote} (DISTCC_FALLBACK=0); see ${distccLogs.join(' ')}`);
      }
    }
    return out;
  }
  const rotate = (all, k) => {
    const xs = all.filter((m) => !opts.modes || opts.modes.has(m));
    return xs.map((_, i) => xs[(i + k) % xs.length]).filter((m) => k === 0 || !CFG.onceModes.includes(m));
  };
  const record = (key, mode, value) => (((results[key] ??= {})[mode] ??= []).push(value));
  /** A measurement of n jobs one after the other, per job (the figures a mode has no process for stay undefined). */
  const perJob = (m, n) => {
    const per = (x) => (x === undefined ? undefined : x / n);
    return {
      wallUs: m.walls.reduce((a, b) => a + b, 0) / n, initUs: per(m.initUs), remoteUs: per(m.remoteUs), clientUs: per(m.clientUs), ownUs: per(m.ownUs),
      initDaemonUs: per(m.initDaemonUs), remoteSshdUs: per(m.remoteSshdUs), coordinatorUs: per(m.coordinatorUs), workerUs: per(m.workerUs),
    };
  };

  // Warm-up: every mode compiles once (connections up, caches warm, the distcc paths proven). Ferry
  // compiles (a)'s two shapes a few times more: its workers learn a shape's cc1 and as commands from
  // its first jobs and then start fork servers for them, which a build has done after its first
  // seconds; one job at a time would otherwise measure that learning in the first run.
  await ferryHostsUp(2);
  for (const [cc, file] of [['gcc', 'hello.c'], ['g++', 'shape.cc']]) {
    await procs.run([FERRY, cc, '-O2', '-c', file, '-o', join(tmp, 'warm.o')], { env: env.ferry(2), cwd: join(W, 'a'), log: join(tmp, 'warmup.log'), n: 6 });
  }
  for (const mode of ['distcc-L', 'distcc-ssh']) {
    await measure(mode, [...MODES[mode].cc('gcc'), '-c', 'hello.c', '-o', join(tmp, 'warm.o')], { cwd: join(W, 'a'), expectRemote: 1, what: 'warm-up' });
  }

  // ---- local reference objects ----
  const localRun = (argv, cwd, what) => procs.run(argv, { env: baseEnv, cwd, log: join(tmp, 'reference.log'), timeoutMs: 900_000 }).catch((err) => {
    throw new Error(`${what}: ${err.message}`);
  });
  await localRun(['gcc', '-O2', '-c', 'hello.c', '-o', 'ref/hello.o'], join(W, 'a'), 'reference hello.o');
  await localRun(['g++', '-O2', '-c', 'heavy.cc', '-o', 'ref/heavy.o'], join(W, 'a'), 'reference heavy.o');
  if (want('b') || want('scaling') || want('rss')) await localRun(['make', '-s', `-j${NPROC}`, `BUILD=${join(W, 'b', 'ref')}`], join(W, 'b'), 'reference (b)');

  // Build directories for (c)/(d), configured once with compiles forced local (the launchers are used by the builds only).
  const builds = {};
  if (needLeveldb) {
    const isSample = project.dir === SAMPLE;
    const launchers = { ref: undefined, local: undefined, ferry: FERRY, distcc: '/usr/bin/distcc', ccache: '/usr/bin/ccache' };
    await Promise.all(Object.entries(launchers).map(async ([name, launcher]) => {
      const bdir = join(W, 'c', name);
      const args = ['-S', project.dir, '-B', bdir, '-G', 'Ninja', '-DCMAKE_BUILD_TYPE=Release'];
      if (!isSample) args.push('-DLEVELDB_BUILD_TESTS=OFF', '-DLEVELDB_BUILD_BENCHMARKS=OFF', '-DLEVELDB_INSTALL=OFF');
      if (launcher) args.push(`-DCMAKE_C_COMPILER_LAUNCHER=${launcher}`, `-DCMAKE_CXX_COMPILER_LAUNCHER=${launcher}`);
      await procs.run(['cmake', ...args], {
        env: { ...baseEnv, FERRY_DISABLE: '1', DISTCC_HOSTS: 'localhost', CCACHE_DISABLE: '1' }, cwd: W, log: join(tmp, `cmake-${name}.log`), timeoutMs: 300_000,
      });
      builds[name] = bdir;
    }));
    await localRun(['ninja', `-j${NPROC}`], builds.ref, 'reference (c)');
    results.projectJobs = listObjects(builds.ref).length;
    say(`${project.name}: ${results.projectJobs} compile jobs`);
  }

  // ---------------------------------------------------------------------------------------------
  // (a) one job at a time
  // ---------------------------------------------------------------------------------------------
  if (want('a')) {
    phase('(a) one job at a time');
    for (let run = 0; run < CFG.targetRuns; run++) {
      for (const mode of rotate(ALL_MODES, run)) {
        const dir = join(W, 'a', mode);
        mkdirSync(dir, { recursive: true });
        const t = await measure(mode, [...MODES[mode].cc('gcc'), '-O2', '-c', 'hello.c', '-o', `${mode}/hello.o`],
          { cwd: join(W, 'a'), n: CFG.trivialJobs, expectRemote: mode === 'local' ? 0 : CFG.trivialJobs, what: 'trivial' });
        compareObjects(`(a) hello.c, ${mode}`, dir, join(W, 'a', 'ref'), ['hello.o']);
        record('trivial', mode, perJob(t, CFG.trivialJobs));
        rmSync(join(dir, 'hello.o'));
        // The reference modes run once (CFG.onceModes), one heavy job is enough for them.
        const H = CFG.onceModes.includes(mode) ? 1 : CFG.heavyJobs;
        const h = await measure(mode, [...MODES[mode].cc('g++'), '-O2', '-c', 'heavy.cc', '-o', `${mode}/heavy.o`],
          { cwd: join(W, 'a'), n: H, expectRemote: mode === 'local' ? 0 : H, what: 'heavy' });
        compareObjects(`(a) heavy.cc, ${mode}`, dir, join(W, 'a', 'ref'), ['heavy.o']);
        record('heavy', mode, perJob(h, H));
        rmObjects(dir);
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // (b) 200 small C files with make
  // ---------------------------------------------------------------------------------------------
  const makeSmall = async (mode, { j, hosts = 2, what }) => {
    const bdir = join(W, 'b', `build-${mode}`);
    rmSync(bdir, { recursive: true, force: true });
    const cc = MODES[mode].cc('gcc').join(' ');
    const r = await measure(mode, ['make', '-s', `-j${j}`, `BUILD=${bdir}`, `CC=${cc}`], {
      cwd: join(W, 'b'), hosts, expectRemote: mode === 'local' ? 0 : CFG.smallFiles, what,
    });
    compareObjects(`${what}, ${mode}`, bdir, join(W, 'b', 'ref'));
    const per = (x) => x / CFG.smallFiles;
    return {
      wallUs: r.wallUs, initUs: per(r.initUs), remoteUs: per(r.remoteUs), jobsPerS: CFG.smallFiles / (r.wallUs / 1e6), bytes: r.bytes, how: r.how,
      initDaemonUs: per(r.initDaemonUs), remoteSshdUs: per(r.remoteSshdUs), coordinatorUs: r.coordinatorUs === undefined ? undefined : per(r.coordinatorUs),
      workerUs: r.workerUs === undefined ? undefined : per(r.workerUs),
    };
  };
  if (want('b')) {
    phase(`(b) ${CFG.smallFiles} small C files, make -j${CFG.jobs}`);
    for (let run = 0; run < CFG.targetRuns; run++) {
      for (const mode of rotate(CFG.smallModes, run)) {
        record('small', mode, await makeSmall(mode, { j: mode === 'local' ? NPROC : CFG.jobs, what: '(b)' }));
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // (c) the CMake project with ninja; (d) the same with ccache in front
  // ---------------------------------------------------------------------------------------------
  const ninjaBuild = async (mode, bdir, { envOver = {}, expectRemote, what }) => {
    execFileSync('ninja', ['-C', bdir, '-t', 'clean'], { stdio: 'ignore', timeout: 60_000 });
    const r = await measure(mode, ['ninja', `-j${mode === 'local' ? NPROC : CFG.jobs}`], { cwd: bdir, envOver, expectRemote, what });
    compareObjects(`${what}, ${mode}`, bdir, builds.ref);
    return { wallUs: r.wallUs, initUs: r.initUs, remoteUs: r.remoteUs, bytes: r.bytes, how: r.how, initDaemonUs: r.initDaemonUs, remoteSshdUs: r.remoteSshdUs };
  };
  if (want('c') && needLeveldb) {
    phase(`(c) ${project.name}, ninja -j${CFG.jobs}`);
    const dirOf = { local: builds.local, ferry: builds.ferry, 'distcc-L': builds.distcc, 'distcc-ssh': builds.distcc };
    for (let run = 0; run < opts.runs; run++) {
      for (const mode of rotate(CFG.leveldbModes, run)) {
        record('project', mode, await ninjaBuild(mode, dirOf[mode], { expectRemote: mode === 'local' ? 0 : results.projectJobs, what: '(c)' }));
      }
    }
  }
  if (want('d') && needLeveldb) {
    phase(`(d) ${project.name} with ccache in front, cold and warm`);
    const prefix = { ferry: FERRY, 'distcc-L': '/usr/bin/distcc' };
    for (let run = 0; run < opts.runs; run++) {
      for (const cpp2 of CFG.cpp2Variants) {
        for (const mode of rotate(['ferry', 'distcc-L'], run)) {
          const ccacheDir = join(tmp, 'ccache', `${mode}-${cpp2}-${run}`);
          mkdirSync(ccacheDir, { recursive: true });
          const envOver = { CCACHE_DIR: ccacheDir, CCACHE_PREFIX: prefix[mode], ...(cpp2 ? {} : { CCACHE_NOCPP2: '1' }) };
          const cold = await ninjaBuild(mode, builds.ccache, { envOver, expectRemote: results.projectJobs, what: `(d) ccache cold, run_second_cpp=${cpp2}` });
          const warm = await ninjaBuild(mode, builds.ccache, { envOver, expectRemote: 0, what: `(d) ccache warm, run_second_cpp=${cpp2}` });
          record(`ccache-${cpp2}-cold`, mode, cold);
          record(`ccache-${cpp2}-warm`, mode, warm);
          rmSync(ccacheDir, { recursive: true, force: true });
        }
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Scaling on (b): workers and -j
  // ---------------------------------------------------------------------------------------------
  if (want('scaling')) {
    phase('scaling on (b): workers and -j');
    const points = [...new Set([...CFG.scalingWorkers, 2])].sort().map((w) => ({ w, j: CFG.jobs }))
      .concat(CFG.scalingJ.filter((j) => j !== CFG.jobs).map((j) => ({ w: 2, j })));
    results.scalingPoints = points;
    // 2 workers at -j16 is (b) itself: its rows are reused when (b) ran.
    const reuse = (p) => p.w === 2 && p.j === CFG.jobs && results.small?.ferry && results.small?.['distcc-L'];
    for (let run = 0; run < CFG.scalingRuns; run++) {
      for (const p of points.filter((x) => !reuse(x))) {
        for (const mode of rotate(['ferry', 'distcc-L'], run)) {
          if (mode === 'ferry') await ferryHostsUp(p.w);
          const r = await makeSmall(mode, { j: p.j, hosts: p.w, what: `scaling w=${p.w} -j${p.j}` });
          record(`scale-${p.w}-${p.j}`, mode, r);
        }
      }
    }
    await ferryHostsUp(2);
  }

  // ---------------------------------------------------------------------------------------------
  // Coordinator memory at -j256
  // ---------------------------------------------------------------------------------------------
  if (want('rss')) {
    phase('coordinator peak RSS, (b) at -j256');
    await procs.stopDaemon(coordinator);
    await startCoordinator();
    await ferryHostsUp(2);
    const vm = () => {
      const s = readFileSync(`/proc/${coordinator.pid}/status`, 'utf8');
      return { hwm: Number(/VmHWM:\s+(\d+)/.exec(s)[1]), rss: Number(/VmRSS:\s+(\d+)/.exec(s)[1]) };
    };
    const before = vm();
    const r = await makeSmall('ferry', { j: 256, what: '(b) at -j256' });
    results.rss = { before, after: vm(), jobsPerS: r.jobsPerS };
  }
  phase('report');
  return started;
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------
function report(started) {
  const R = results;
  const lines = [];
  const p = (s = '') => lines.push(s);
  const ratioCell = (rows, key, num = 'ferry', den = 'distcc-L') => {
    const a = rows?.[num];
    const b = rows?.[den];
    if (!a || !b) return '–';
    const n = Math.min(a.length, b.length);
    return cell(summary(Array.from({ length: n }, (_, i) => a[i][key] / b[i][key])), fmtRatio);
  };
  const col = (rows, mode, key, fmt) => cell(summary((rows?.[mode] ?? []).map((x) => x[key])), fmt);
  /** Ferry's preprocessing over a workload's runs: driverless, and jobs compiled twice for exact messages. */
  const howLine = (rows) => {
    const h = (rows?.ferry ?? []).map((x) => x.how).filter(Boolean);
    if (!h.length) return;
    const sum = (k) => h.reduce((n, x) => n + x[k], 0);
    p(`\nFerry over these runs: ${sum('jobs')} jobs; ${sum('direct')} preprocessed without gcc's driver (the cc1 command learnt for their argv shape), ` +
      `${sum('forked')} of them by a fork server (a started cc1 forked for the job); ` +
      `${sum('reruns')} compiled a second time with -fdirectives-only because the fully preprocessed run printed something (\`jobs.exactReruns\`); ` +
      `on the workers, ${sum('compiledDirect')} compiled by cc1 and as without gcc's driver (their commands learnt per job shape; worker logs), ` +
      `${sum('compiledPiped')} of them with cc1 writing into as through a named pipe, ${sum('compiledForked')} with both forked from started copies (fork servers).`);
  };
  const loadLine = (pred) => {
    const xs = (R.foreign ?? []).filter((x) => pred(x.what)).map((x) => x.foreign);
    const f = summary(xs);
    if (f) p(`\n_Other load on the machine during this part: median ${(f.median * 100).toFixed(0)}% of all cores, max ${(f.max * 100).toFixed(0)}%._`);
  };
  const med1 = (rows, mode, key, fmt) => {
    const s = summary((rows?.[mode] ?? []).map((x) => x[key]));
    return s ? fmt(s.median) : '–';
  };
  const cpu = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /model name\s*:\s*(.*)/.exec(cpu)?.[1] ?? 'unknown';
  const ver = (cmd) => {
    try {
      return execFileSync('sh', ['-c', `${cmd} 2>&1`], { encoding: 'utf8' }).split('\n')[0].trim();
    } catch {
      return '?';
    }
  };
  p(`# Ferry against distcc — \`npm run bench\``);
  p();
  p(`- date: ${started.toISOString()}`);
  p(`- machine: ${NPROC} cores (\`nproc\`), CPU ${model}, kernel ${release()}; Node ${process.version}; ${ver('gcc --version')}; ` +
    `${ver('distcc --version')}; ${ver('ccache --version')}; ${ver('ssh -V')}; ${ver('cmake --version')}; ninja ${ver('ninja --version')}`);
  p(`- command: \`npm run bench --${process.argv.slice(2).length ? ` ${process.argv.slice(2).join(' ')}` : ''}\` ` +
    `(runs: ${opts.runs}${CFG.targetRuns !== opts.runs ? `, of (a) and (b) ${CFG.targetRuns}` : ''}${opts.quick ? ', --quick' : ''}; modes interleaved round robin; cells: median [min..max] over runs` +
    (opts.runs > 1 ? `; ${CFG.onceModes.join(' and ')}, which no target compares against, in the first run only; scaling points ${CFG.scalingRuns} runs` : '') + ')');
  p(`- cluster: ${cluster.remotes.length} remotes in network namespaces (own sshd; ferry-worker and \`distccd --allow 127.0.0.1 --listen 127.0.0.1 --nice 0\` ` +
    `on the namespace's loopback only), ${opts.slots} slots per host on both sides; 2 remotes unless a row says otherwise`);
  p(`- **all sides share the same ${NPROC} cores**: the initiator, every remote's sshd, worker or distccd and its compilers. ` +
    'Walls and jobs/s are therefore CPU-bound totals, not what separate machines would give; CPU per side is what to compare.');
  p(`- CPU accounting: ${R.accounting}. Initiator = the build (make/ninja, launcher or distcc, preprocessors, ccache) plus the mode's ` +
    'own initiator daemons (Ferry: coordinator; distcc ssh -L: the ssh clients; distcc ssh mode: ssh per job + ControlMaster). ' +
    'Remote = sshd and its children plus the mode\'s workers (ferry-worker or distccd) and their compilers. Idle daemons of the other modes are left out.');
  p(`- distcc modes: \`ssh -L\`: DISTCC_HOSTS=127.0.0.1:PORT/${opts.slots} through one ssh forward per remote` +
    (opts.tunnel === 'session' ? ' (each forward\'s connection also holds an idle session, which makes sshd set TCP_NODELAY)' : ' (`ssh -N -L`)') +
    `; ssh mode: DISTCC_HOSTS=@rN-cm/${opts.slots} (\`ssh rN distccd --inetd\` per job over a ControlMaster connection). DISTCC_FALLBACK=0. ` +
    'The remotes\' sshd gives sessions an empty HOME (`SetEnv`), so the login user\'s shell start-up files (~/.bashrc, which bash reads for every `ssh host command`) do not run per job.');
  p('- checked on every build: Ferry `stats --json` jobs.remote = compile count and jobs.local = 0; distccd COMPILE_OK count = compile count; ' +
    'every object byte-identical to a local build.');
  const fl = (R.foreign ?? []).filter((x) => x.what !== 'warm-up');
  if (fl.length) {
    const fs = summary(fl.map((x) => x.foreign));
    const worst = fl.reduce((a, b) => (b.foreign > a.foreign ? b : a));
    const pct = (x) => `${(x * 100).toFixed(0)}%`;
    p(`- other load: machine CPU outside the bench's cgroups during the measurements (other processes, this harness, kernel), ` +
      `as a share of all cores: median ${pct(fs.median)}, max ${pct(fs.max)} (${worst.what})` +
      (fs.max > 0.1 ? ' — **the machine was not idle: compare ratios within a run, not absolute times**' : ''));
  }
  p();

  if (R.trivial || R.heavy) {
    p('## (a) One job at a time');
    p();
    p(`trivial = hello.c (\`gcc -O2 -c\`, includes stdio.h), ${CFG.trivialJobs} jobs one after the other per run, per job; heavy = heavy.cc (iostream, regex, map, ` +
      `unordered_map, sstream…, \`g++ -O2 -c\`), ${CFG.heavyJobs} job${CFG.heavyJobs > 1 ? 's' : ''} one after the other per run (${CFG.onceModes.join(' and ')}: one), per job.`);
    p();
    p('| file | mode | wall per job | initiator CPU per job | of which daemons | remote CPU per job | of which sshd |');
    p('|---|---|---|---|---|---|---|');
    for (const [key, name] of [['trivial', 'trivial'], ['heavy', 'heavy']]) {
      if (!R[key]) continue;
      for (const mode of ['ferry', 'distcc-L', 'distcc-ssh', 'local']) {
        if (!R[key][mode]) continue;
        const f = key === 'heavy' ? fmtS : fmtMs;
        p(`| ${name} | ${mode} | ${col(R[key], mode, 'wallUs', f)} | ${col(R[key], mode, 'initUs', fmtMs)} | ${mode === 'local' ? '–' : med1(R[key], mode, 'initDaemonUs', fmtMs)} | ` +
          `${mode === 'local' ? '–' : col(R[key], mode, 'remoteUs', fmtMs)} | ${mode === 'local' ? '–' : med1(R[key], mode, 'remoteSshdUs', fmtMs)} |`);
      }
      p(`| ${name} | **ferry / distcc ssh -L** | ${ratioCell(R[key], 'wallUs')} | ${ratioCell(R[key], 'initUs')} | | ${ratioCell(R[key], 'remoteUs')} | |`);
    }
    p('\n"of which daemons": the mode\'s long-lived initiator processes (coordinator; ssh -L clients; ControlMaster), the rest is the build\'s own ' +
      'process tree. "of which sshd": sshd and its children (crypto; in ssh mode also each job\'s distccd --inetd and compiler).');
    loadLine((w) => w === 'trivial' || w === 'heavy');
    if (R.trivial?.ferry) {
      p(`\nClient process per trivial job — its own CPU (/proc/PID/schedstat at exit, children excluded) / with the children it waited for (wait4 rusage): ` +
        `ferry launcher ${col(R.trivial, 'ferry', 'ownUs', fmtMs)} / ${col(R.trivial, 'ferry', 'clientUs', fmtMs)} (it runs the preprocessor the coordinator asks for); ` +
        `distcc, ssh -L ${col(R.trivial, 'distcc-L', 'ownUs', fmtMs)} / ${col(R.trivial, 'distcc-L', 'clientUs', fmtMs)} (its cpp); ` +
        `local gcc driver ${col(R.trivial, 'local', 'ownUs', fmtMs)} / ${col(R.trivial, 'local', 'clientUs', fmtMs)} (cc1, as).`);
    }
    for (const [key, name] of [['trivial', 'trivial'], ['heavy', 'heavy']]) {
      if (!R[key]?.ferry) continue;
      p(`\nFerry's processes per ${name} job (/proc/PID/stat, their children excluded): coordinator ${col(R[key], 'ferry', 'coordinatorUs', fmtMs)}, ` +
        `workers' Node processes ${col(R[key], 'ferry', 'workerUs', fmtMs)}.`);
    }
    p();
  }

  if (R.small) {
    p(`## (b) ${CFG.smallFiles} small C files, \`make -j${CFG.jobs}\` (local: \`-j${NPROC}\`)`);
    p();
    p('| mode | wall | jobs/s | initiator CPU per job | of which daemons | remote CPU per job | of which sshd |');
    p('|---|---|---|---|---|---|---|');
    for (const mode of ['ferry', 'distcc-L', 'distcc-ssh', 'local']) {
      if (!R.small[mode]) continue;
      const l = mode === 'local';
      p(`| ${mode} | ${col(R.small, mode, 'wallUs', fmtS)} | ${col(R.small, mode, 'jobsPerS', fmtNum)} | ${col(R.small, mode, 'initUs', fmtMs)} | ` +
        `${l ? '–' : med1(R.small, mode, 'initDaemonUs', fmtMs)} | ${l ? '–' : col(R.small, mode, 'remoteUs', fmtMs)} | ${l ? '–' : med1(R.small, mode, 'remoteSshdUs', fmtMs)} |`);
    }
    p(`| **ferry / distcc ssh -L** | ${ratioCell(R.small, 'wallUs')} | ${ratioCell(R.small, 'jobsPerS')} | ${ratioCell(R.small, 'initUs')} | | ${ratioCell(R.small, 'remoteUs')} | |`);
    loadLine((w) => w === '(b)');
    howLine(R.small);
    if (R.small.ferry) {
      p(`\nFerry's "daemons" are its coordinator and the preprocessors its fork servers run; the coordinator process alone: ` +
        `${col(R.small, 'ferry', 'coordinatorUs', fmtMs)} per job; the workers' Node processes alone (their compilers excluded): ` +
        `${col(R.small, 'ferry', 'workerUs', fmtMs)} per job (/proc/PID/stat).`);
    }
    p();
  }

  if (R.project || Object.keys(R).some((k) => k.startsWith('ccache-'))) {
    p(`## (c) ${R.project.name}, CMake + \`ninja -j${CFG.jobs}\` (local: \`-j${NPROC}\`), ${R.projectJobs} compile jobs`);
    if (R.project.fallback) p(`\n**FALLBACK: leveldb's source could not be fetched (${R.project.fallback}); this is test/fixtures/sample (C).**`);
    p();
    if (R.project) {
      p('| mode | wall | initiator CPU | initiator CPU per job | remote CPU |');
      p('|---|---|---|---|---|');
      for (const mode of ['ferry', 'distcc-L', 'distcc-ssh', 'local']) {
        if (!R.project[mode]) continue;
        const perJob = cell(summary(R.project[mode].map((x) => x.initUs / R.projectJobs)), fmtMs);
        p(`| ${mode} | ${col(R.project, mode, 'wallUs', fmtS)} | ${col(R.project, mode, 'initUs', fmtS)} | ${perJob} | ${mode === 'local' ? '–' : col(R.project, mode, 'remoteUs', fmtS)} |`);
      }
      p(`| **ferry / distcc ssh -L** | ${ratioCell(R.project, 'wallUs')} | ${ratioCell(R.project, 'initUs')} | | ${ratioCell(R.project, 'remoteUs')} |`);
      loadLine((w) => w === '(c)');
      howLine(R.project);
      const b = (R.project.ferry ?? []).map((x) => x.bytes).filter(Boolean);
      if (b.length) {
        const raw = b.reduce((s, x) => s + x.raw, 0);
        const sent = b.reduce((s, x) => s + x.sent, 0);
        p(`\nBytes on the wire (Ferry, \`ferry stats --json\` over these builds): preprocessed sources ${(raw / b.length / 1048576).toFixed(1)} MiB per build ` +
          `before LZ4, ${(sent / b.length / 1048576).toFixed(1)} MiB sent: **LZ4 ratio ${(raw / sent).toFixed(2)}** (bytes.sourceRaw / bytes.sourceSent).`);
      }
      p();
    }
    const ck = Object.keys(R).filter((k) => k.startsWith('ccache-'));
    if (ck.length) {
      p(`## (d) (c) with ccache in front (\`CMAKE_<LANG>_COMPILER_LAUNCHER=ccache\`, \`CCACHE_PREFIX=ferry\` or \`distcc\`), cold then warm cache`);
      p();
      p('| run_second_cpp | cache | mode | wall | initiator CPU | remote CPU |');
      p('|---|---|---|---|---|---|');
      for (const cpp2 of CFG.cpp2Variants) {
        for (const temp of ['cold', 'warm']) {
          const rows = R[`ccache-${cpp2}-${temp}`];
          if (!rows) continue;
          const label = cpp2 ? 'true (default)' : 'false (CCACHE_NOCPP2=1)';
          for (const mode of ['ferry', 'distcc-L']) {
            if (rows[mode]) p(`| ${label} | ${temp} | ${mode} | ${col(rows, mode, 'wallUs', fmtS)} | ${col(rows, mode, 'initUs', fmtS)} | ${col(rows, mode, 'remoteUs', fmtS)} |`);
          }
          p(`| ${label} | ${temp} | **ferry / distcc ssh -L** | ${ratioCell(rows, 'wallUs')} | ${ratioCell(rows, 'initUs')} | ${temp === 'warm' ? '–' : ratioCell(rows, 'remoteUs')} |`);
        }
      }
      loadLine((w) => w.startsWith('(d)'));
      p();
    }
  }

  if (R.scalingPoints) {
    p(`## Scaling on (b): ${CFG.smallFiles} small C files`);
    p();
    p(`${opts.slots} slots per worker. The remotes share the machine's ${NPROC} cores, so more workers add slots and connections but no CPU. ` +
      `${CFG.scalingRuns} run${CFG.scalingRuns > 1 ? 's' : ''} per point; the row for 2 workers at -j${CFG.jobs} is (b), with its ${CFG.targetRuns}.`);
    p();
    p('| workers | make -j | ferry jobs/s | distcc ssh -L jobs/s | ratio | ferry initiator CPU/job | distcc initiator CPU/job | ratio |');
    p('|---|---|---|---|---|---|---|---|');
    for (const pt of R.scalingPoints) {
      const rows = R[`scale-${pt.w}-${pt.j}`] ?? R.small;
      p(`| ${pt.w} | ${pt.j} | ${col(rows, 'ferry', 'jobsPerS', fmtNum)} | ${col(rows, 'distcc-L', 'jobsPerS', fmtNum)} | ${ratioCell(rows, 'jobsPerS')} | ` +
        `${col(rows, 'ferry', 'initUs', fmtMs)} | ${col(rows, 'distcc-L', 'initUs', fmtMs)} | ${ratioCell(rows, 'initUs')} |`);
    }
    loadLine((w) => w.startsWith('scaling'));
    p();
  }
  if (R.rss) {
    p('## Coordinator memory');
    p();
    p(`Fresh coordinator, 2 hosts up: VmRSS ${(R.rss.before.rss / 1024).toFixed(1)} MiB (VmHWM ${(R.rss.before.hwm / 1024).toFixed(1)} MiB); ` +
      `after (b) with \`make -j256\` (${fmtNum(R.rss.jobsPerS)} jobs/s): **peak VmHWM ${(R.rss.after.hwm / 1024).toFixed(1)} MiB**, VmRSS ${(R.rss.after.rss / 1024).toFixed(1)} MiB.`);
    p();
  }

  // ---- targets ----
  const med = (rows, key, num = 'ferry', den = 'distcc-L') => {
    const a = rows?.[num];
    const b = rows?.[den];
    if (!a || !b) return undefined;
    return summary(Array.from({ length: Math.min(a.length, b.length) }, (_, i) => a[i][key] / b[i][key]))?.median;
  };
  const targets = [
    ['initiator CPU per job on (b), ferry / distcc ssh -L', med(R.small, 'initUs'), (v) => v <= 0.8, '≤ 0.8×', fmtRatio],
    ['launcher\'s own CPU per job (trivial job; its preprocessor child excluded)', summary((R.trivial?.ferry ?? []).map((x) => x.ownUs))?.median, (v) => v <= 5000, '≤ 5 ms', fmtMs],
    ['throughput on (b), ferry / distcc ssh -L jobs/s', med(R.small, 'jobsPerS'), (v) => v >= 1.2, '≥ 1.2×', fmtRatio],
    ['one trivial job\'s latency, ferry / distcc ssh -L', med(R.trivial, 'wallUs'), (v) => v <= 1.0, '≤ 1.0×', fmtRatio],
    ['one heavy job\'s latency, ferry / distcc ssh -L', med(R.heavy, 'wallUs'), (v) => v <= 1.0, '≤ 1.0×', fmtRatio],
  ];
  p('## Targets');
  p();
  p('| target | goal | measured (median) | |');
  p('|---|---|---|---|');
  for (const [name, v, ok, goal, fmt] of targets) p(`| ${name} | ${goal} | ${v === undefined ? 'not run' : fmt(v)} | ${v === undefined ? '' : ok(v) ? 'met' : '**MISSED**'} |`);
  p();
  p('## Phases');
  p();
  p(`| phase | time |\n|---|---|\n${phases.filter((x) => x.name !== 'report').map((x) => `| ${x.name} | ${x.s.toFixed(0)} s |`).join('\n')}`);
  const total = phases.reduce((s, x) => s + x.s, 0);
  p(`| total | ${total.toFixed(0)} s |`);
  if (notes.length) p(`\n${notes.map((n) => `- ${n}`).join('\n')}`);
  return lines.join('\n');
}

let code = 0;
try {
  const started = await main();
  phases[phases.length - 1].s = 0;
  const text = report(started);
  console.log(text);
  mkdirSync(RESULTS, { recursive: true });
  writeFileSync(join(RESULTS, 'latest.md'), `${text}\n`);
  say(`written to ${relative(process.cwd(), join(RESULTS, 'latest.md')) || join(RESULTS, 'latest.md')}`);
} catch (err) {
  say(`FAILED: ${err.stack ?? err.message}`);
  code = 1;
} finally {
  clearTimeout(overall);
  cleanup();
}
process.exit(code);
