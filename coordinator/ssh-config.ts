/**
 * Resolves a host alias exactly as OpenSSH does: `ssh -G` merges every Host/Match block, follows Include and fills in
 * defaults, so Ferry never re-implements ssh_config's precedence rules. Only the few fields the coordinator needs are kept.
 */
import { execFile } from 'node:child_process';
import { userInfo, hostname as osHostname } from 'node:os';
import { FerryError } from '../proto/errors';

export type StrictHostKeyChecking = 'yes' | 'no' | 'accept-new' | 'ask';

export interface SshTarget {
  /** The name the user wrote (FERRY_HOSTS / ssh_config `Host`); every message names it. */
  alias: string;
  hostname: string;
  port: number;
  user: string;
  /** Absolute paths (~ and the common % tokens expanded); they may not exist. */
  identityFiles: string[];
  identitiesOnly: boolean;
  userKnownHostsFiles: string[];
  globalKnownHostsFiles: string[];
  strictHostKeyChecking: StrictHostKeyChecking;
  hostKeyAlias?: string;
  connectTimeoutSec?: number;
  /** HashKnownHosts: how an accept-new entry is written. Absent means no. */
  hashKnownHosts?: boolean;
}

/** What `%d`, `%u`, `%l` and `~` expand to; defaults to the passwd entry, as OpenSSH uses (not $HOME). */
export interface LocalIdentity {
  home: string;
  localUser: string;
  uid: number;
  localHostname: string;
}

export function localIdentity(): LocalIdentity {
  const info = userInfo();
  return { home: info.homedir, localUser: info.username, uid: info.uid, localHostname: osHostname() };
}

const DEFAULT_SSH_G_TIMEOUT_MS = 5000;

/** `ssh -G` prints `key value` lines; keys may repeat (identityfile), the first value of a single-valued key wins. */
function collectKeys(output: string): Map<string, string[]> {
  const keys = new Map<string, string[]>();
  for (const rawLine of output.split('\n')) {
    const line = rawLine.trim();
    if (!line) continue;
    const space = line.indexOf(' ');
    const key = (space < 0 ? line : line.slice(0, space)).toLowerCase();
    const value = space < 0 ? '' : line.slice(space + 1).trim();
    const list = keys.get(key);
    if (list) list.push(value);
    else keys.set(key, [value]);
  }
  return keys;
}

export function parseStrictHostKeyChecking(value: string): StrictHostKeyChecking | undefined {
  switch (value.toLowerCase()) {
    case 'yes':
    case 'true':
      return 'yes';
    case 'no':
    case 'false':
    case 'off':
      return 'no';
    case 'accept-new':
      return 'accept-new';
    case 'ask':
      return 'ask';
    default:
      return undefined;
  }
}

export function expandTilde(path: string, home: string): string {
  const base = home.length > 1 ? home.replace(/\/+$/, '') : home;
  if (path === '~') return base;
  if (path.startsWith('~/')) return (base === '/' ? '' : base) + path.slice(1);
  return path;
}

/**
 * OpenSSH 9.2's `ssh -G` prints IdentityFile without expanding its % tokens (it expands them only when connecting),
 * so the tokens ssh_config(5) allows there are expanded here. Unknown tokens are left as written.
 */
export function expandIdentityTokens(
  path: string,
  t: { hostname: string; port: number; user: string; alias: string; hostKeyAlias?: string },
  local: LocalIdentity,
): string {
  const table: Record<string, string> = {
    '%': '%',
    d: local.home,
    u: local.localUser,
    i: String(local.uid),
    L: local.localHostname.split('.')[0],
    l: local.localHostname,
    h: t.hostname,
    p: String(t.port),
    r: t.user,
    n: t.alias,
    k: t.hostKeyAlias ?? t.hostname,
  };
  return path.replace(/%(.)/g, (whole, token: string) => table[token] ?? whole);
}

function invalid(alias: string, what: string): FerryError {
  return new FerryError(
    'ssh-config-invalid',
    `ssh -G ${alias}: ${what}`,
    'Check the ssh configuration for this host (FERRY_SSH_CONFIG or ~/.ssh/config) with `ssh -G HOST`.',
  );
}

function single(keys: Map<string, string[]>, key: string): string | undefined {
  return keys.get(key)?.[0];
}

function fileList(keys: Map<string, string[]>, key: string, home: string): string[] {
  const out: string[] = [];
  for (const value of keys.get(key) ?? []) {
    for (const part of value.split(/\s+/)) {
      if (part && part.toLowerCase() !== 'none') out.push(expandTilde(part, home));
    }
  }
  return out;
}

/** Turns the output of `ssh -G alias` into an SshTarget. Pure apart from the `local` default. */
export function parseSshG(output: string, alias: string, local: LocalIdentity = localIdentity()): SshTarget {
  const keys = collectKeys(output);
  const hostname = single(keys, 'hostname');
  const user = single(keys, 'user');
  const portText = single(keys, 'port');
  if (!hostname) throw invalid(alias, 'no hostname in the output');
  if (!user) throw invalid(alias, 'no user in the output');
  const port = Number(portText);
  if (!portText || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw invalid(alias, `bad port ${JSON.stringify(portText ?? '')}`);
  }

  const strictText = single(keys, 'stricthostkeychecking') ?? 'ask';
  const strictHostKeyChecking = parseStrictHostKeyChecking(strictText);
  if (!strictHostKeyChecking) throw invalid(alias, `unknown StrictHostKeyChecking value ${JSON.stringify(strictText)}`);

  const hostKeyAliasText = single(keys, 'hostkeyalias');
  const hostKeyAlias = hostKeyAliasText && hostKeyAliasText !== 'none' ? hostKeyAliasText : undefined;

  const timeoutText = single(keys, 'connecttimeout');
  let connectTimeoutSec: number | undefined;
  if (timeoutText && timeoutText !== 'none') {
    connectTimeoutSec = Number(timeoutText);
    if (!Number.isFinite(connectTimeoutSec) || connectTimeoutSec <= 0) {
      throw invalid(alias, `bad ConnectTimeout ${JSON.stringify(timeoutText)}`);
    }
  }

  const tokens = { hostname, port, user, alias, hostKeyAlias };
  const identityFiles = (keys.get('identityfile') ?? [])
    .filter((v) => v && v.toLowerCase() !== 'none')
    .map((v) => expandTilde(expandIdentityTokens(v, tokens, local), local.home));

  const target: SshTarget = {
    alias,
    hostname,
    port,
    user,
    identityFiles,
    identitiesOnly: single(keys, 'identitiesonly') === 'yes',
    userKnownHostsFiles: fileList(keys, 'userknownhostsfile', local.home),
    globalKnownHostsFiles: fileList(keys, 'globalknownhostsfile', local.home),
    strictHostKeyChecking,
    hashKnownHosts: single(keys, 'hashknownhosts') === 'yes',
  };
  if (hostKeyAlias) target.hostKeyAlias = hostKeyAlias;
  if (connectTimeoutSec !== undefined) target.connectTimeoutSec = connectTimeoutSec;
  return target;
}

export interface ResolveOptions {
  /** From `user@host` in FERRY_HOSTS; passed as `-l` so OpenSSH's own precedence applies. */
  user?: string;
  /** From `host:port` in FERRY_HOSTS; passed as `-p`. */
  port?: number;
  timeoutMs?: number;
}

/** The argument list for `ssh -G`; pure so the override rules are table-tested. */
export function sshGArgs(alias: string, env: NodeJS.ProcessEnv, options: ResolveOptions = {}): string[] {
  const args = ['-G'];
  if (env.FERRY_SSH_CONFIG) args.push('-F', env.FERRY_SSH_CONFIG);
  if (options.user !== undefined) args.push('-l', options.user);
  if (options.port !== undefined) args.push('-p', String(options.port));
  // `--` keeps an alias starting with '-' from being read as an option.
  args.push('--', alias);
  return args;
}

/** Runs `ssh -G` (bounded) and parses it. Rejects with a FerryError naming the alias. */
export function resolveSshTarget(
  alias: string,
  env: NodeJS.ProcessEnv = process.env,
  options: ResolveOptions = {},
): Promise<SshTarget> {
  if (!alias) return Promise.reject(invalid(alias, 'empty host name'));
  if (options.port !== undefined && !(Number.isInteger(options.port) && options.port > 0 && options.port < 65536)) {
    return Promise.reject(invalid(alias, `bad port ${options.port}`));
  }
  const timeoutMs = options.timeoutMs ?? DEFAULT_SSH_G_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    execFile(
      'ssh',
      sshGArgs(alias, env, options),
      { env, timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 1 << 20, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (err) {
          const e = err as NodeJS.ErrnoException & { killed?: boolean; signal?: string };
          if (e.code === 'ENOENT') {
            reject(
              new FerryError('ssh-missing', `cannot resolve ${alias}: the ssh client is not installed (no \`ssh\` in PATH)`,
                'Install the OpenSSH client (Debian: apt-get install openssh-client).', { cause: err }),
            );
          } else if (e.killed || e.signal === 'SIGKILL') {
            reject(
              new FerryError('ssh-timeout', `cannot resolve ${alias}: \`ssh -G\` did not finish within ${timeoutMs} ms`,
                'Check for a slow Match exec or Include in the ssh configuration.', { cause: err }),
            );
          } else {
            const detail = stderr.trim() || e.message;
            reject(new FerryError('ssh-config-invalid', `cannot resolve ${alias}: ${detail}`,
              'Fix the ssh configuration (FERRY_SSH_CONFIG or ~/.ssh/config); `ssh -G HOST` shows the same error.',
              { cause: err }));
          }
          return;
        }
        try {
          resolve(parseSshG(stdout, alias));
        } catch (parseErr) {
          reject(parseErr);
        }
      },
    ).stdin?.end();
  });
}
