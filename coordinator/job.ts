/**
 * One compile handed over by the launcher, from its command line to the reply: classify, pick
 * hosts, preprocess here, compile there, write the outputs. Every way of ending up local is
 * counted by reason; the ones the user did not choose are also told once per build.
 */
import { randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import { errorMessage, FerryError } from '../proto/errors';
import type { LaunchReply } from '../proto/generated/ferry/launcher/v1/LaunchReply';
import type { LaunchRequest__Output } from '../proto/generated/ferry/launcher/v1/LaunchRequest';
import type { JobRecord } from '../proto/generated/ferry/coordinator/v1/JobRecord';
import type { Slots } from '../worker/slots';
import { classify, type CppMode, type RemotePlan } from './classify';
import { readSourceFile, wantsColour, wantsExcerpts } from './diagnostics';
import { expectedOutputs } from './outputs';
import { expandResponseFiles } from './response-file';
import { identifyCompiler, type LocalCompiler } from './compiler-id';
import type { Host } from './host';
import { removeOutput, writeAtomically } from './object-writer';
import { hostsSource, type HostPool } from './pool';
import type { LocalSlots } from './local-slots';
import { needsExactRun, preprocess, remoteCompileArgs, usesColumnBuiltins, type AskLauncher } from './preprocess';
import { RemoteFailure, type RemoteOutcome } from './remote-compile';
import type { Scheduler } from './scheduler';
import type { Notices } from './notices';
import type { StatsStore } from './stats';
import type { DriverTemplates } from './driver-template';
import type { ForkServers } from '../proto/fork-server';

export const LAUNCHER_PROTOCOL = 2;
/** The native launcher of this installation (dist/bin/ferry). */
const LAUNCHER_PATH = join(__dirname, '..', 'bin', 'ferry');
/** A job that goes wrong on one host is tried on one more before it compiles locally. */
const REMOTE_ATTEMPTS = 2;
const REMOTE_DEADLINE_MS = 30 * 60_000;
/** Environment the remote compiler gets: message language and colours, nothing that changes code. */
const REMOTE_ENV = /^(LANG|LANGUAGE|LC_[A-Z]+|GCC_COLORS|GCC_URLS|TERM_URLS)$/;

/** Job ids: this coordinator's random prefix and a count (unique in its preprocess directory and in a worker's log). */
const JOB_ID_PREFIX = randomBytes(4).toString('hex');
let jobsStarted = 0;

/** Preprocessors at once by default; asked once (it is a sched_getaffinity call). */
const CORES = availableParallelism();

export interface JobContext {
  pool: HostPool;
  scheduler: Scheduler<Host>;
  /** Compiles this machine takes on when every remote slot is busy (`localhost/N`). */
  localSlots: LocalSlots;
  /** Jobs between the decision to go remote and their end: they will fill remote slots. */
  remoteBound: { count: number };
  /** Preprocessors running at once on this machine. */
  cppSlots: Slots;
  stats: StatsStore;
  notices: Notices;
  log: (line: string) => void;
  record: (job: JobRecord) => void;
  /** Where launchers write preprocessed sources for us to read (a private directory). */
  preprocessDir: string;
  /** gcc's `-E` commands learnt per argv shape, run without the driver. */
  driverTemplates: DriverTemplates;
  /** Started copies of cc1 that fork the preprocessors of driverless jobs. */
  forkServers?: ForkServers;
}

export function envFromList(list: readonly string[]): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const entry of list) {
    const eq = entry.indexOf('=');
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return env;
}

function done(exitCode: number, stdout: Buffer, stderr: Buffer): LaunchReply {
  return { action: 'DONE', exitCode, stdout, stderr };
}

/** The reply for the launcher, and what to release once it hangs up (a local compile ended). */
export interface JobOutcome {
  reply: LaunchReply;
  releaseOnClose?: () => void;
}

export async function runJob(request: LaunchRequest__Output, context: JobContext, ask: AskLauncher, signal: AbortSignal): Promise<JobOutcome> {
  const reply = await decide(request, context, ask, signal);
  return 'reply' in reply ? reply : { reply };
}

async function decide(request: LaunchRequest__Output, context: JobContext, ask: AskLauncher, signal: AbortSignal): Promise<LaunchReply | JobOutcome> {
  const started = Date.now();
  const argv = expandResponseFiles(request.argv, request.cwd);
  const decision = classify(argv);
  // For the job list: the source when there is one, else the first file named (a link's first object).
  const source = decision.decision === 'remote' ? decision.plan.source : (argv.slice(1).find((a) => !a.startsWith('-')) ?? '');
  const finish = (where: string, reason: string, exitCode: number) =>
    context.record({ source, where, reason, exitCode, millis: Date.now() - started, finished: new Date().toISOString() });

  /** Run locally; `notice` is said once per build when the user did not ask for this. */
  const runLocally = (reason: string, detail: string, notice?: string): LaunchReply => {
    context.stats.countLocal(reason);
    finish('local', reason, 0);
    const tell = notice !== undefined && context.notices.shouldTell(reason, request.sid);
    if (notice !== undefined) context.log(`local (${reason}): ${source}: ${detail}`);
    return { action: 'RUN_LOCALLY', notice: tell ? `ferry: ${notice}; compiling locally. Run 'ferry status' for details.` : '' };
  };

  if (request.protocol !== LAUNCHER_PROTOCOL) {
    return runLocally('protocol-mismatch', `launcher protocol ${request.protocol}`, 'the ferry launcher and coordinator are different versions (run `ferry stop`)');
  }
  if (decision.decision === 'local') {
    // `ferry ccache gcc …`: ccache goes first, and calls ferry back for its misses.
    if (decision.reason === 'ccache-in-front') {
      const env = envFromList(request.env);
      context.log(`ccache in front of ${argv[1] ?? '?'}: its misses come back through CCACHE_PREFIX`);
      return { action: 'RUN_LOCALLY', env: env.CCACHE_PREFIX ? [] : [`CCACHE_PREFIX=${LAUNCHER_PATH}`] };
    }
    return runLocally(decision.reason, decision.detail);
  }
  const plan = decision.plan;
  const env = envFromList(request.env);

  let hostsConfigured: boolean;
  try {
    const source = hostsSource(env);
    context.pool.configure(source, env);
    context.localSlots.resize(context.pool.config.localSlots);
    context.cppSlots.resize(context.pool.config.cppSlots ?? CORES);
    hostsConfigured = context.pool.hosts.length > 0;
  } catch (err) {
    return runLocally('hosts-invalid', errorMessage(err), errorMessage(err));
  }
  if (!hostsConfigured) return runLocally('no-hosts', 'no hosts configured', 'no hosts configured (set FERRY_HOSTS="host1/8 host2/8")');

  let compiler: LocalCompiler;
  try {
    compiler = await identifyCompiler(plan.compiler, request.cwd, env.PATH ?? '');
  } catch (err) {
    return runLocally('compiler-unknown', errorMessage(err), errorMessage(err));
  }

  await hostWithCompiler(context.pool.hosts, compiler);
  const candidates = () => context.pool.hosts.filter((h) => h.accepts(compiler));
  if (!candidates().some((h) => h.usable)) {
    const up = context.pool.hosts.filter((h) => h.usable);
    if (up.length > 0) {
      const mismatch = `no host has ${compiler.name} "${compiler.version}" for ${compiler.target}`;
      return runLocally('compiler-mismatch', mismatch, mismatch);
    }
    const why = context.pool.hosts.map((h) => `${h.name}: ${h.lastError ?? h.state}`).join('; ');
    return runLocally('no-host-available', why, `no remote host is reachable (${why})`);
  }

  // `localhost/N`: when every remote slot is spoken for (jobs compiling, queued or still being
  // preprocessed for one), this machine compiles too. The launcher runs the compiler and keeps our
  // connection open until it exits, which frees the slot.
  if (context.remoteBound.count >= remoteCapacity(candidates())) {
    const release = context.localSlots.tryAcquire();
    if (release) {
      context.stats.countLocal('localhost-slot');
      finish('localhost', 'localhost-slot', 0);
      return { reply: { action: 'RUN_LOCALLY', holdConnection: true }, releaseOnClose: release };
    }
  }

  context.remoteBound.count++;
  try {
    return await remotePath({ request, context, ask, signal, plan, compiler, env, argv, finish, runLocally });
  } finally {
    context.remoteBound.count--;
  }
}

/** Slots this coordinator may fill on the usable hosts: theirs, less what other initiators use. */
export function remoteCapacity(hosts: ReadonlyArray<Pick<Host, 'usable' | 'slots' | 'busy' | 'inUse'>>): number {
  return hosts.filter((h) => h.usable).reduce((n, h) => n + Math.max(0, h.slots - (h.busy - h.inUse)), 0);
}

interface RemotePathArgs {
  request: LaunchRequest__Output;
  context: JobContext;
  ask: AskLauncher;
  signal: AbortSignal;
  plan: RemotePlan;
  compiler: LocalCompiler;
  env: NodeJS.ProcessEnv;
  argv: string[];
  finish: (where: string, reason: string, exitCode: number) => void;
  runLocally: (reason: string, detail: string, notice?: string) => LaunchReply;
}

/** Preprocess here, compile on a host, write the outputs. */
async function remotePath({ request, context, ask, signal, plan, compiler, env, argv, finish, runLocally }: RemotePathArgs): Promise<LaunchReply> {
  const jobId = `${JOB_ID_PREFIX}-${(++jobsStarted).toString(36)}`;
  const files = expectedOutputs(plan);
  const outputPaths = files.map((f) => resolve(request.cwd, f.path));
  const removeOutputs = () => Promise.all(outputPaths.map((p) => removeOutput(p)));
  // gcc colours diagnostics when its stderr is a terminal; here its stderr is a pipe, the user's is not.
  if (wantsColour({ stderrIsTty: request.stderrIsTty, argv }, env)) {
    plan.cppArgs.unshift('-fdiagnostics-color=always');
    plan.compileArgs.unshift('-fdiagnostics-color=always');
  }
  const stats = context.stats.stats;
  /** Preprocess here (as `mode` says), then compile on some host unless preprocessing already settled it. */
  const attempt = async (mode: CppMode) => {
    const planned = { ...plan, cppMode: mode };
    const releaseCpp = await context.cppSlots.acquire(signal);
    let pre;
    const cppStarted = Date.now();
    try {
      pre = await preprocess(compiler.path, planned, request.cwd, join(context.preprocessDir, `${jobId}.i`), ask, {
        templates: context.driverTemplates,
        env,
        driverVersion: compiler.fileVersion,
        forkServers: context.forkServers,
      });
    } finally {
      releaseCpp();
    }
    if (!plan.preprocessed) stats.time.preprocess += Date.now() - cppStarted;
    const columnBuiltins = mode === 'full' && pre.exitCode === 0 && usesColumnBuiltins(pre.source);
    if (pre.exitCode !== 0 || columnBuiltins) return { pre, columnBuiltins, outcome: undefined };
    return { pre, columnBuiltins, outcome: await compileOnSomeHost(jobId, planned, compiler, pre.source, env, request.cwd, context, signal) };
  };
  const userMode = env.FERRY_PREPROCESS === 'directives-only' ? 'directives-only' : plan.cppMode;
  let run = await attempt(userMode);
  if (
    userMode === 'full' &&
    needsExactRun({
      preprocessExit: run.pre.exitCode,
      preprocessStderr: run.pre.stderr.length,
      columnBuiltins: run.columnBuiltins,
      compile: run.outcome?.ok ? { exitCode: run.outcome.remote.result.exitCode, stdout: run.outcome.remote.result.stdout.length, stderr: run.outcome.remote.result.stderr.length } : undefined,
    })
  ) {
    // What the user sees must be a local build's: the directives-only split gives that.
    stats.jobs.exactReruns++;
    run = await attempt('directives-only');
  }
  const { pre, outcome } = run;
  if (pre.exitCode !== 0) {
    stats.jobs.preprocessErrors++;
    context.stats.changed();
    await removeOutputs();
    finish('local', 'preprocess-error', pre.exitCode);
    return done(pre.exitCode, Buffer.alloc(0), pre.stderr);
  }
  if (!outcome) throw new FerryError('internal', `job ${jobId}: no compile after a clean directives-only preprocess`);
  if (!outcome.ok) return runLocally(outcome.reason, outcome.detail, outcome.detail);
  const { result, outputs } = outcome.remote;
  stats.jobs.remote++;
  if (pre.direct) stats.jobs.preprocessedDirect++;
  if (pre.forked) stats.jobs.preprocessedForked++;
  stats.bytes.sourceRaw += pre.source.length;
  stats.bytes.sourceSent += outcome.remote.bytesSent;
  stats.bytes.outputRaw += outputs.reduce((n, o) => n + o.length, 0);
  stats.bytes.outputReceived += outcome.remote.bytesReceived;
  stats.time.remote += outcome.millis;
  stats.time.remoteCompile += Math.round((result.timings?.compileUs ?? 0) / 1000);
  const hostCounters = context.stats.host(outcome.host.name);
  hostCounters.jobs++;
  const stderr = Buffer.concat([pre.stderr, result.stderr]);
  if (result.exitCode !== 0) {
    stats.jobs.compileErrors++;
    hostCounters.compileErrors++;
    context.stats.changed();
    await removeOutputs();
    finish(outcome.host.name, '', result.exitCode);
    return done(result.exitCode, result.stdout, stderr);
  }
  context.stats.changed();
  try {
    for (let i = 0; i < files.length; i++) {
      // A .dwo the compiler did not write (no debug information after all) must not linger.
      if (i > 0 && outputs[i].length === 0) await removeOutput(outputPaths[i]);
      else await writeAtomically(outputPaths[i], outputs[i], request.umask);
    }
  } catch (err) {
    await removeOutputs().catch(() => undefined);
    finish(outcome.host.name, 'output-write-failed', 1);
    return done(1, result.stdout, Buffer.concat([stderr, Buffer.from(`ferry: ${errorMessage(err)}\n`)]));
  }
  finish(outcome.host.name, '', 0);
  return done(0, result.stdout, stderr);
}

/**
 * Brings up hosts not yet connected (or due for a retry; down ones answer at once) and waits until
 * one that has the job's compiler is up, or all have answered: not for every slow host, and not
 * giving up on one still connecting (a job retried after its host failed needs that).
 */
async function hostWithCompiler(hosts: readonly Host[], compiler: LocalCompiler): Promise<void> {
  // Every call gives hosts due for a retry their reconnection attempt, wanted or not.
  const attempts = hosts.map((h) =>
    h.ensureUp().then(() => {
      if (!h.accepts(compiler)) throw new Error(`${h.name} has no matching ${compiler.name}`);
    }),
  );
  // All failed or none matches: the caller says so, with each host's reason.
  const settled = Promise.any(attempts).catch(() => undefined);
  if (!hosts.some((h) => h.usable && h.accepts(compiler))) await settled;
}

type HostOutcome =
  | { ok: true; remote: RemoteOutcome; host: Host; millis: number }
  | { ok: false; reason: string; detail: string };

async function compileOnSomeHost(
  jobId: string,
  plan: RemotePlan,
  compiler: LocalCompiler,
  source: Buffer,
  env: NodeJS.ProcessEnv,
  cwd: string,
  context: JobContext,
  signal: AbortSignal,
): Promise<HostOutcome> {
  const header = {
    jobId,
    compiler: compiler.name,
    compilerVersion: compiler.version,
    args: remoteCompileArgs(plan, cwd),
    language: plan.language,
    outputs: expectedOutputs(plan).map(({ kind, name }) => ({ kind, name })),
    sourceSize: source.length,
    sourceName: plan.source,
    env: Object.fromEntries(Object.entries(env).filter(([name]) => REMOTE_ENV.test(name))) as Record<string, string>,
    cwd,
    // clang shows excerpts from the source it compiles, which has them; gcc reads the files.
    // A full-mode run's diagnostics are replaced by an exact run's: no excerpts for them.
    sourceExcerpts: plan.family === 'gcc' && plan.cppMode === 'directives-only' && wantsExcerpts(plan.compileArgs),
    sourcePath: plan.family === 'clang' ? plan.source : '',
  };
  const readSource = (path: string) => readSourceFile(resolve(cwd, path));
  const candidates = () => context.pool.hosts.filter((h) => h.accepts(compiler));
  let lastFailure = '';
  for (let attempt = 0; attempt < REMOTE_ATTEMPTS; attempt++) {
    let host: Host;
    try {
      await hostWithCompiler(context.pool.hosts, compiler);
      host = await context.scheduler.acquire(candidates, signal);
    } catch (err) {
      if (signal.aborted) throw err;
      return { ok: false, reason: 'no-host-available', detail: lastFailure || errorMessage(err) };
    }
    const started = Date.now();
    host.running.set(header.jobId, { source: plan.source, started });
    try {
      if (!host.jobs) throw new RemoteFailure(`${host.name} lost its connection`, undefined, true);
      const remote = await host.jobs.compile(header, source, { deadlineMs: REMOTE_DEADLINE_MS, signal, readSource });
      host.jobsDone++;
      return { ok: true, remote, host, millis: Date.now() - started };
    } catch (err) {
      if (!(err instanceof RemoteFailure)) throw err;
      host.failures++;
      context.stats.host(host.name).failures++;
      lastFailure = `${host.name} failed the job: ${err.message}`;
      context.log(`job ${header.jobId} ${plan.source}: ${lastFailure}`);
      // The worker refused the job itself (a limit, an option): another host would too.
      if (!err.hostFault) return { ok: false, reason: 'remote-refused', detail: lastFailure };
      host.markDown(err);
      if (attempt + 1 < REMOTE_ATTEMPTS) {
        context.stats.stats.jobs.retried++;
        context.stats.host(host.name).retried++;
        context.stats.changed();
      }
    } finally {
      host.running.delete(header.jobId);
      context.scheduler.release(host);
    }
  }
  return { ok: false, reason: 'remote-failed', detail: lastFailure };
}

