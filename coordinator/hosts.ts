/**
 * FERRY_HOSTS: where jobs may go. Whitespace-separated entries, distcc-like:
 *
 *   [user@]host[:sshport][/slots][,option...]
 *
 * `host` is an alias resolved through ~/.ssh/config. Options: `port=N` (the worker's TCP port on the
 * remote's loopback, default 3633), `socket=/path` (the worker's Unix socket on the remote instead),
 * `direct=/path` (no SSH: a worker socket on this machine, for the demo and for debugging).
 * `localhost[/N]` lets up to N jobs compile on this machine when every remote slot is busy, and
 * `--localslots_cpp=N` bounds the preprocessors running here at once (distcc's names).
 *
 * DISTCC_HOSTS is read too, in distcc's own syntax, so a distcc user switches by changing one word.
 */
import { FerryError } from '../proto/errors';

export type WorkerEndpoint = { kind: 'tcp'; port: number } | { kind: 'unix'; path: string };

export interface HostSpec {
  /** `[user@]host[:sshport]`: the host's name in status and stats. */
  name: string;
  kind: 'ssh' | 'direct' | 'local';
  /** SSH alias (kind 'ssh'). */
  alias?: string;
  user?: string;
  sshPort?: number;
  /** Slots the user allows; undefined means "what the worker advertises". */
  slots?: number;
  worker: WorkerEndpoint;
}

export const DEFAULT_WORKER_PORT = 3633;

function invalid(entry: string, why: string): FerryError {
  return new FerryError(
    'hosts-invalid',
    `FERRY_HOSTS entry "${entry}": ${why}`,
    'Write hosts as "[user@]host[:sshport][/slots][,port=N|,socket=/path]", separated by spaces, e.g. FERRY_HOSTS="build1/16 build2/16".',
  );
}

function parseCount(entry: string, text: string, what: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1) throw invalid(entry, `${what} must be a positive whole number, got "${text}"`);
  return Number(text);
}

export function parseHostEntry(entry: string): HostSpec {
  const [main, ...options] = entry.split(',');
  let rest = main;
  let slots: number | undefined;
  const slash = rest.lastIndexOf('/');
  if (slash >= 0) {
    slots = parseCount(entry, rest.slice(slash + 1), 'slots');
    rest = rest.slice(0, slash);
  }
  let user: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    user = rest.slice(0, at);
    rest = rest.slice(at + 1);
    if (!user) throw invalid(entry, 'empty user name before "@"');
  }
  let sshPort: number | undefined;
  const portMatch = /^(.*):(\d+)$/.exec(rest);
  if (portMatch) {
    rest = portMatch[1];
    sshPort = parseCount(entry, portMatch[2], 'SSH port');
    if (sshPort > 65535) throw invalid(entry, 'SSH port must be at most 65535');
  }
  if (!rest || !/^[A-Za-z0-9_.%+-]+$/.test(rest)) throw invalid(entry, `"${rest}" is not a host name`);

  let worker: WorkerEndpoint = { kind: 'tcp', port: DEFAULT_WORKER_PORT };
  let direct: string | undefined;
  for (const option of options) {
    const eq = option.indexOf('=');
    const key = eq < 0 ? option : option.slice(0, eq);
    const value = eq < 0 ? '' : option.slice(eq + 1);
    if (key === 'port') {
      const port = parseCount(entry, value, 'worker port');
      if (port > 65535) throw invalid(entry, 'worker port must be at most 65535');
      worker = { kind: 'tcp', port };
    } else if (key === 'socket') {
      if (!value.startsWith('/')) throw invalid(entry, 'socket= needs an absolute path');
      worker = { kind: 'unix', path: value };
    } else if (key === 'direct') {
      if (!value.startsWith('/')) throw invalid(entry, 'direct= needs an absolute path to a worker socket on this machine');
      direct = value;
    } else {
      throw invalid(entry, `unknown option "${key}" (known: port=, socket=, direct=)`);
    }
  }
  const name = `${user ? `${user}@` : ''}${rest}${sshPort ? `:${sshPort}` : ''}`;
  if (rest === 'localhost' && !direct && options.length === 0) {
    return { name, kind: 'local', slots, worker };
  }
  if (direct) return { name, kind: 'direct', alias: rest, slots, worker: { kind: 'unix', path: direct } };
  return { name, kind: 'ssh', alias: rest, user, sshPort, slots, worker };
}

export function parseHosts(text: string): HostSpec[] {
  const entries = text.split(/\s+/).filter(Boolean);
  const specs = entries.map(parseHostEntry);
  const seen = new Set<string>();
  for (const spec of specs) {
    if (seen.has(spec.name)) throw invalid(spec.name, 'listed twice');
    seen.add(spec.name);
  }
  return specs;
}

export type HostsSyntax = 'ferry' | 'distcc';

export interface HostsConfig {
  remotes: HostSpec[];
  /** Jobs that may compile on this machine when every remote slot is busy (`localhost/N`). */
  localSlots: number;
  /** Preprocessors at once on this machine; undefined: one per core. */
  cppSlots?: number;
  /** What was read but ignored or changed, for the log and `ferry status`. */
  notes: string[];
}

/** distcc's default for a bare `localhost`. */
const DEFAULT_LOCAL_SLOTS = 2;

function globalOption(entry: string, config: HostsConfig): boolean {
  const m = /^--(localslots|localslots_cpp)=(.*)$/.exec(entry);
  if (!m) return false;
  const n = parseCount(entry, m[2], m[1]);
  if (m[1] === 'localslots') config.localSlots = n;
  else config.cppSlots = n;
  return true;
}

/** One DISTCC_HOSTS entry in Ferry's terms: every remote is reached through SSH. */
export function distccEntryToFerry(entry: string, notes: string[]): string | undefined {
  if (entry === '--randomize') {
    notes.push('DISTCC_HOSTS --randomize ignored: Ferry places each job on the least-loaded host');
    return undefined;
  }
  if (entry.startsWith('+zeroconf')) {
    notes.push('DISTCC_HOSTS +zeroconf ignored: list the hosts by name');
    return undefined;
  }
  const [main, ...options] = entry.split(',');
  if (options.length > 0) notes.push(`${entry}: options ,${options.join(',')} ignored (Ferry compresses with LZ4 and always preprocesses here)`);
  const at = main.indexOf('@');
  if (at >= 0) {
    // SSH host: [user]@host[/limit][:command]
    const user = main.slice(0, at);
    let rest = main.slice(at + 1);
    const colon = rest.indexOf(':');
    if (colon >= 0) {
      notes.push(`${entry}: remote command "${rest.slice(colon + 1)}" ignored (Ferry talks to ferry-worker)`);
      rest = rest.slice(0, colon);
    }
    return `${user ? `${user}@` : ''}${rest}`;
  }
  // TCP host: host[:port][/limit] or the old host[/limit][:port]; the port is distccd's.
  const m = /^([^:/]+)(?::(\d+))?(?:\/(\d+))?(?::(\d+))?$/.exec(main);
  if (!m) throw invalid(entry, 'not a distcc host entry');
  const [, host, port1, limit, port2] = m;
  if (port1 || port2) notes.push(`${entry}: distccd port ${port1 ?? port2} ignored (Ferry reaches the worker through SSH)`);
  return `${host}${limit ? `/${limit}` : ''}`;
}

/** The hosts in force, from FERRY_HOSTS syntax or DISTCC_HOSTS syntax. */
export function parseHostsConfig(text: string, syntax: HostsSyntax): HostsConfig {
  const config: HostsConfig = { remotes: [], localSlots: 0, notes: [] };
  const entries: string[] = [];
  for (const entry of text.split(/\s+/).filter(Boolean)) {
    if (globalOption(entry, config)) continue;
    const ferryEntry = syntax === 'distcc' ? distccEntryToFerry(entry, config.notes) : entry;
    if (ferryEntry !== undefined) entries.push(ferryEntry);
  }
  for (const spec of parseHosts(entries.join(' '))) {
    if (spec.kind === 'local') config.localSlots = spec.slots ?? DEFAULT_LOCAL_SLOTS;
    else config.remotes.push(spec);
  }
  return config;
}
