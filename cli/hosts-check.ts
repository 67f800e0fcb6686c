/**
 * `ferry hosts check [HOST…]`: for each host, one line per check (ssh config, sshd, host key,
 * login, worker, version, compilers) with what to do when it fails. It connects by itself with the
 * coordinator's own pieces (ssh -G, ssh2 with the same host-key and key rules, the tunnel), so it
 * needs no coordinator and sees a host exactly as the coordinator would.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Client } from 'ssh2';
import { FerryError, errorMessage } from '../proto/errors';
import { loadWorkerProto } from '../proto/load';
import { FERRY_VERSION } from '../proto/version';
import type { WorkerDescription__Output } from '../proto/generated/ferry/v1/WorkerDescription';
import { identifyCompiler, type LocalCompiler } from '../coordinator/compiler-id';
import { compilerMatches } from '../coordinator/host';
import { parseHostEntry, parseHostsConfig, type HostSpec } from '../coordinator/hosts';
import {
  checkHostKey,
  fingerprintSha256,
  hostKeyAction,
  keyTypeOfBlob,
  knownKeyTypes,
  parseKnownHosts,
  preferredHostKeyAlgorithms,
  type KnownHostsEntry,
} from '../coordinator/known-hosts';
import { hostsSource } from '../coordinator/pool';
import { resolveSshTarget, type SshTarget } from '../coordinator/ssh-config';
import { connectFailureHint, connectSsh, hostKeyError, knownHostsKey } from '../coordinator/ssh-connection';
import { describeDestination, openTunnel, type Tunnel, type TunnelDestination } from '../coordinator/tunnel';

export type CheckStatus = 'pass' | 'fail' | 'skip';

export interface CheckResult {
  check: string;
  status: CheckStatus;
  detail: string;
  /** What to do, for a failure. */
  hint?: string;
}

export interface HostReport {
  host: string;
  ok: boolean;
  checks: CheckResult[];
}

/** The compilers whose twins on each host are compared, when they exist here. */
export const CHECKED_COMPILERS = ['gcc', 'g++', 'cc', 'c++', 'clang', 'clang++'] as const;

const SSH_TIMEOUT_MS = 10_000;
const DESCRIBE_TIMEOUT_MS = 10_000;
const PROBE_TIMEOUT_MS = 10_000;

const pass = (check: string, detail: string): CheckResult => ({ check, status: 'pass', detail });
const fail = (check: string, detail: string, hint?: string): CheckResult => ({ check, status: 'fail', detail, ...(hint ? { hint } : {}) });
const skip = (check: string, detail: string): CheckResult => ({ check, status: 'skip', detail });
/** A failed check from an error: its message, and its hint when it is a FerryError. */
const failWith = (check: string, err: unknown): CheckResult =>
  fail(check, err instanceof Error ? err.message : String(err), err instanceof FerryError ? err.hint : undefined);

// ---------------------------------------------------------------------------------------------
// Pure decisions

/**
 * The hosts to check: each argument is a configured host (by name or alias, keeping its
 * ,port=/,socket= options) or a FERRY_HOSTS entry of its own; no arguments: every configured host.
 */
export function selectHosts(args: readonly string[], configured: readonly HostSpec[]): HostSpec[] {
  if (args.length === 0) return [...configured];
  return args.map((arg) => configured.find((spec) => spec.name === arg || spec.alias === arg) ?? parseHostEntry(arg));
}

/** One check per compiler found here: the host's compiler of that name must say the same. */
export function compilerChecks(local: readonly LocalCompiler[], description: WorkerDescription__Output, hostName: string): CheckResult[] {
  const served = description.compilers.map((c) => c.name).sort();
  return local.map((compiler) => {
    const check = `compiler ${compiler.name}`;
    const remote = description.compilers.find((c) => c.name === compiler.name);
    if (compilerMatches(compiler, remote)) return pass(check, `${compiler.version} (${compiler.target})`);
    const keptLocal = `until then ${compiler.name} jobs compile on this machine.`;
    if (!remote) {
      return fail(check, `the worker does not serve ${compiler.name} (it serves ${served.join(', ') || 'nothing'})`,
        `Install ${compiler.name} on ${hostName} (here: ${compiler.version}, ${compiler.target}) and let the worker serve it ` +
          `(allow = … in /etc/ferry/worker.conf), then \`sudo systemctl restart ferry-worker\`; ${keptLocal}`);
    }
    return fail(check, `there "${remote.version}" for ${remote.target}, here "${compiler.version}" for ${compiler.target}`,
      `Install the same ${compiler.name} on ${hostName} as here (or here as there); ${keptLocal}`);
  });
}

export function versionCheck(theirs: string, hostName: string, ours = FERRY_VERSION): CheckResult {
  if (theirs === ours) return pass('version', `${theirs}, as here`);
  return fail('version', `the worker is Ferry ${theirs || '(unknown)'}, this machine runs ${ours}`,
    `Install Ferry ${ours} on ${hostName} and \`sudo systemctl restart ferry-worker\` (or upgrade this machine to ${theirs}).`);
}

/** What a remote socket probe (see SOCKET_PROBE) found: missing, not a socket, not writable (its group), ok. */
export type SocketProbe = { kind: 'missing' } | { kind: 'not-socket' } | { kind: 'denied'; group: string } | { kind: 'ok' };

export function parseSocketProbe(output: string): SocketProbe | undefined {
  const [word, group] = output.trim().split(/\s+/);
  if (word === 'missing') return { kind: 'missing' };
  if (word === 'not-socket') return { kind: 'not-socket' };
  if (word === 'denied') return { kind: 'denied', group: group || 'ferry' };
  if (word === 'ok') return { kind: 'ok' };
  return undefined;
}

/** The advice for a worker that did not answer, from where it should listen, why the forwarded channel failed and what the probe saw. */
export function workerHint(spec: HostSpec, login: string, probe: SocketProbe | undefined, channelError = ''): string {
  const where = spec.alias ?? spec.name;
  if (/prohibited/i.test(channelError)) {
    return `sshd on ${where} refuses to forward: set ${spec.worker.kind === 'tcp' ? 'AllowTcpForwarding' : 'AllowStreamLocalForwarding'} yes in its sshd_config (and restart sshd).`;
  }
  const running = `Is ferry-worker running on ${where}? \`ssh ${where} systemctl status ferry-worker\` shows it`;
  if (spec.worker.kind === 'tcp') {
    return `${running}; it must listen on 127.0.0.1:${spec.worker.port} (listen in /etc/ferry/worker.conf), or name its socket here with ,socket=/run/ferry/worker.sock.`;
  }
  const path = spec.worker.path;
  switch (probe?.kind) {
    case 'denied':
      return `${login} may not open ${path} (group ${probe.group}): on ${where} run \`sudo usermod -aG ${probe.group} ${login}\`, then reconnect (group changes apply at the next login).`;
    case 'missing':
      return `There is no ${path} on ${where}. ${running}, with listen = unix:${path}.`;
    case 'not-socket':
      return `${path} on ${where} is not a socket: check listen in /etc/ferry/worker.conf there.`;
    default:
      return `${running}, with listen = unix:${path}; ${login} must be in its socket_group (\`sudo usermod -aG ferry ${login}\` there).`;
  }
}

/** Shell words for the probe; the path is single-quoted. */
export function socketProbeCommand(path: string): string {
  const p = `'${path.replace(/'/g, `'\\''`)}'`;
  return `if [ ! -e ${p} ]; then echo missing; elif [ ! -S ${p} ]; then echo not-socket; elif [ ! -w ${p} ]; then echo denied "$(stat -c %G ${p})"; else echo ok; fi`;
}

const MARK: Record<CheckStatus, string> = { pass: '✓', fail: '✗', skip: '-' };

export function formatReports(reports: readonly HostReport[]): string {
  const lines: string[] = [];
  const width = Math.max(14, ...reports.flatMap((r) => r.checks.map((c) => c.check.length)));
  for (const report of reports) {
    lines.push(`${report.host}`);
    for (const c of report.checks) {
      lines.push(`  ${MARK[c.status]} ${c.check.padEnd(width)}  ${c.detail}`);
      if (c.status === 'fail' && c.hint) lines.push(`    ${' '.repeat(width)}  -> ${c.hint}`);
    }
  }
  const ready = reports.filter((r) => r.ok).length;
  lines.push(ready === reports.length ? `${ready} of ${reports.length} hosts ready` : `${ready} of ${reports.length} hosts ready; fix the lines marked ✗`);
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// Checks

export interface CheckContext {
  env: NodeJS.ProcessEnv;
  /** Compilers found on this machine, compared with each host's. */
  local: LocalCompiler[];
  /** Where tunnel sockets go (removed by the caller). */
  scratchDir: string;
}

/** The compilers of CHECKED_COMPILERS found on this machine (those not installed are left out). */
export async function localCompilers(env: NodeJS.ProcessEnv, cwd: string): Promise<LocalCompiler[]> {
  const found = await Promise.all(
    CHECKED_COMPILERS.map((name) =>
      identifyCompiler(name, cwd, env.PATH ?? '').catch((err: unknown) => {
        if (err instanceof FerryError && err.code === 'compiler-not-found') return undefined; // not installed here: nothing to compare
        throw err;
      }),
    ),
  );
  return found.filter((c): c is LocalCompiler => c !== undefined);
}

async function loadKnownHosts(target: SshTarget): Promise<KnownHostsEntry[]> {
  const entries: KnownHostsEntry[] = [];
  for (const file of [...target.userKnownHostsFiles, ...target.globalKnownHostsFiles]) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') continue; // OpenSSH's defaults name files that usually do not exist
      throw new FerryError('known-hosts-unreadable', `cannot read ${file}: ${errorMessage(err)}`, `Fix the permissions of ${file}.`);
    }
    entries.push(...parseKnownHosts(text, file));
  }
  return entries;
}

/** Connects only far enough to see the host key, and hangs up. */
function fetchHostKey(target: SshTarget, entries: readonly KnownHostsEntry[]): Promise<Buffer> {
  const lookup = knownHostsKey(target);
  const name = `${target.alias} (${target.hostname}:${target.port})`;
  return new Promise((resolve, reject) => {
    const conn = new Client();
    let key: Buffer | undefined;
    let settled = false;
    const done = (err?: FerryError) => {
      if (settled) return;
      settled = true;
      conn.on('error', () => undefined); // late socket errors of a connection we are dropping
      conn.destroy();
      if (err) reject(err);
      else resolve(key!);
    };
    conn.on('error', (err: Error & { level?: string; code?: string }) => {
      if (key) return done();
      if (err.level === 'client-timeout') {
        return done(new FerryError('ssh-timeout', `${name}: no SSH handshake within ${SSH_TIMEOUT_MS} ms`,
          `Check that ${target.hostname}:${target.port} is an SSH server and reachable (firewalls that drop packets look like this).`));
      }
      done(new FerryError('ssh-connect-failed', `${name}: cannot connect: ${err.message}`, connectFailureHint(err.code, target)));
    });
    conn.on('close', () => (key ? done() : done(new FerryError('ssh-connect-failed', `${name}: closed before showing its host key`, connectFailureHint(undefined, target)))));
    conn.connect({
      host: target.hostname,
      port: target.port,
      username: target.user,
      readyTimeout: target.connectTimeoutSec ? target.connectTimeoutSec * 1000 : SSH_TIMEOUT_MS,
      // The key is all this connection is for: refusing it ends the handshake there.
      hostVerifier: (offered: Buffer, verify: (ok: boolean) => void) => {
        key = offered;
        verify(false);
      },
      algorithms: {
        serverHostKey: preferredHostKeyAlgorithms(knownKeyTypes(entries, lookup.host, lookup.port)) as never,
      },
    });
  });
}

function hostKeyCheck(target: SshTarget, entries: readonly KnownHostsEntry[], key: Buffer): CheckResult {
  const lookup = knownHostsKey(target);
  const keyType = keyTypeOfBlob(key) ?? 'unknown';
  const check = checkHostKey(entries, lookup.host, lookup.port, keyType, key);
  const fp = fingerprintSha256(key);
  switch (hostKeyAction(check.status, target.strictHostKeyChecking)) {
    case 'accept':
      return pass('host key', `${keyType} ${fp}, known (${check.entry!.file}:${check.entry!.line})`);
    case 'accept-and-record':
      return pass('host key', `${keyType} ${fp}, not known yet; StrictHostKeyChecking ${target.strictHostKeyChecking} records it at the first login`);
    case 'refuse': {
      const err = hostKeyError(target, check.status, key, keyType, check.entry, check.knownTypes);
      return fail('host key', err.message, err.hint);
    }
  }
}

/** Runs a command over the connection and returns its stdout (bounded). */
function remoteOutput(conn: Client, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new FerryError('probe-timeout', `\`${command}\` did not finish within ${PROBE_TIMEOUT_MS} ms`)), PROBE_TIMEOUT_MS);
    conn.exec(command, (err, stream) => {
      if (err) {
        clearTimeout(timer);
        return reject(err);
      }
      let out = '';
      stream.on('data', (d: Buffer) => (out += d.toString('utf8')));
      stream.stderr.resume();
      stream.on('close', () => {
        clearTimeout(timer);
        resolve(out);
      });
    });
  });
}

function describe(target: string): Promise<WorkerDescription__Output> {
  const proto = loadWorkerProto();
  const client = new proto.ferry.v1.Worker(target, grpc.credentials.createInsecure(), { 'grpc.enable_retries': 0, 'grpc.use_local_subchannel_pool': 1 });
  return new Promise<WorkerDescription__Output>((resolve, reject) =>
    client.Describe({}, { deadline: Date.now() + DESCRIBE_TIMEOUT_MS }, (err, reply) => (err || !reply ? reject(err ?? new Error('empty reply')) : resolve(reply))),
  ).finally(() => client.close());
}

/** Worker, version and compiler checks for a worker that `dial` reaches. */
async function workerChecks(
  spec: HostSpec,
  context: CheckContext,
  dial: () => Promise<{ target: string; where: string; tunnelErrors: string[] }>,
  diagnose: (channelError: string) => Promise<string>,
): Promise<CheckResult[]> {
  const name = spec.alias ?? spec.name;
  let description: WorkerDescription__Output;
  let where = '';
  let tunnelErrors: string[] = [];
  try {
    const dialled = await dial();
    where = dialled.where;
    tunnelErrors = dialled.tunnelErrors;
    description = await describe(dialled.target);
  } catch (err) {
    // The tunnel's own error says more than gRPC's "connection dropped".
    const why = tunnelErrors[0] ?? (err as grpc.ServiceError).details ?? errorMessage(err);
    return [
      fail('worker', `no worker answered${where ? ` at ${where}` : ''}: ${why}`, await diagnose(tunnelErrors[0] ?? '')),
      skip('version', 'no worker to ask'),
      skip('compilers', 'no worker to ask'),
    ];
  }
  const checks = [
    pass('worker', `ferry-worker on ${description.hostname} at ${where}: ${description.slots} slots, ${description.running} running`),
    versionCheck(description.version, name),
  ];
  if (context.local.length === 0) checks.push(skip('compilers', `none of ${CHECKED_COMPILERS.join(', ')} is installed here`));
  else checks.push(...compilerChecks(context.local, description, name));
  return checks;
}

async function checkSshHost(spec: HostSpec, context: CheckContext, index: number): Promise<CheckResult[]> {
  const checks: CheckResult[] = [];
  const alias = spec.alias!;
  const rest = (...names: string[]) => names.map((n) => skip(n, 'not checked: an earlier check failed'));

  let target: SshTarget;
  try {
    target = await resolveSshTarget(alias, context.env, { user: spec.user, port: spec.sshPort });
    checks.push(pass('ssh config', `${alias} is ${target.user}@${target.hostname} port ${target.port}`));
  } catch (err) {
    return [failWith('ssh config', err), ...rest('sshd reachable', 'host key', 'ssh login', 'worker')];
  }

  let entries: KnownHostsEntry[];
  let key: Buffer;
  try {
    entries = await loadKnownHosts(target);
    key = await fetchHostKey(target, entries);
    checks.push(pass('sshd reachable', `${target.hostname}:${target.port} answers`));
  } catch (err) {
    return [...checks, failWith('sshd reachable', err), ...rest('host key', 'ssh login', 'worker')];
  }
  const keyCheck = hostKeyCheck(target, entries, key);
  checks.push(keyCheck);
  if (keyCheck.status === 'fail') return [...checks, ...rest('ssh login', 'worker')];

  let ssh: Client;
  try {
    ssh = await connectSsh(target, { agentSocket: context.env.SSH_AUTH_SOCK, readyTimeoutMs: target.connectTimeoutSec ? undefined : SSH_TIMEOUT_MS });
    checks.push(pass('ssh login', `logged in as ${target.user}`));
  } catch (err) {
    return [...checks, failWith('ssh login', err), ...rest('worker')];
  }
  const connection = ssh;
  const connectionErrors: string[] = [];
  connection.on('error', (err) => connectionErrors.push(err.message)); // reported through the worker check
  let tunnel: Tunnel | undefined;
  const destination: TunnelDestination =
    spec.worker.kind === 'tcp' ? { kind: 'tcp', host: '127.0.0.1', port: spec.worker.port } : { kind: 'unix', path: spec.worker.path };
  try {
    checks.push(
      ...(await workerChecks(
        spec,
        context,
        async () => {
          tunnel = await openTunnel(connection, destination, join(context.scratchDir, `${index}.sock`));
          const errors: string[] = [];
          tunnel.on('error', (err) => errors.push(err.message));
          return { target: `unix://${tunnel.path}`, where: `${describeDestination(destination)} on ${alias}`, tunnelErrors: errors };
        },
        async (channelError) => {
          if (destination.kind === 'tcp') return workerHint(spec, target.user, undefined, channelError);
          try {
            const probe = parseSocketProbe(await remoteOutput(connection, socketProbeCommand(destination.path)));
            return workerHint(spec, target.user, probe, channelError);
          } catch (err) {
            return `${workerHint(spec, target.user, undefined, channelError)} (Could not look at the socket: ${errorMessage(err)}.)`;
          }
        },
      )),
    );
  } finally {
    await tunnel?.close();
    connection.end();
  }
  if (connectionErrors.length) checks.push(fail('ssh connection', `the connection failed during the checks: ${connectionErrors.join('; ')}`));
  return checks;
}

export async function checkHost(spec: HostSpec, context: CheckContext, index: number): Promise<HostReport> {
  let checks: CheckResult[];
  if (spec.kind === 'local') {
    checks = [pass('this machine', 'localhost compiles here; nothing to check')];
  } else if (spec.kind === 'direct') {
    const path = (spec.worker as { path: string }).path;
    checks = [
      skip('ssh', `direct=${path}: reached without SSH`),
      ...(await workerChecks(spec, context, async () => ({ target: `unix://${path}`, where: path, tunnelErrors: [] }), async () =>
        `Start ferry-worker with --listen unix:${path}.`)),
    ];
  } else {
    checks = await checkSshHost(spec, context, index);
  }
  return { host: spec.name, ok: checks.every((c) => c.status !== 'fail'), checks };
}

export interface HostsCheckOptions {
  json: boolean;
  env: NodeJS.ProcessEnv;
  cwd: string;
  write: (text: string) => void;
}

/** Checks the hosts named (else the configured ones), prints the report; returns the exit status. */
export async function runHostsCheck(args: readonly string[], options: HostsCheckOptions): Promise<number> {
  const source = hostsSource(options.env);
  const configured = parseHostsConfig(source.text, source.syntax).remotes;
  const specs = selectHosts(args, configured);
  if (specs.length === 0) {
    throw new FerryError('no-hosts', 'no hosts to check: none are configured and none were named',
      'Name hosts (ferry hosts check build1 build2), or list them in FERRY_HOSTS or ~/.config/ferry/hosts.');
  }
  const scratchDir = await mkdtemp(join(tmpdir(), 'ferry-check-'));
  let reports: HostReport[];
  try {
    const context: CheckContext = { env: options.env, local: await localCompilers(options.env, options.cwd), scratchDir };
    reports = await Promise.all(specs.map((spec, i) => checkHost(spec, context, i)));
  } finally {
    await rm(scratchDir, { recursive: true, force: true });
  }
  const ok = reports.every((r) => r.ok);
  options.write(options.json ? `${JSON.stringify({ ok, version: FERRY_VERSION, hosts: reports }, null, 2)}\n` : `${formatReports(reports)}\n`);
  return ok ? 0 : 1;
}
