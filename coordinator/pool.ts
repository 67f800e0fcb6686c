/**
 * The hosts in force. They come from the job's FERRY_HOSTS, else the first hosts file found; when
 * the text changes between builds the pool follows it, keeping connections to hosts still listed.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Host, type HostContext } from './host';
import { parseHostsConfig, type HostsConfig, type HostsSyntax } from './hosts';

export function hostsFiles(env: NodeJS.ProcessEnv): string[] {
  const configHome = env.XDG_CONFIG_HOME || join(env.HOME || homedir(), '.config');
  return [join(configHome, 'ferry', 'hosts'), '/etc/ferry/hosts'];
}

export interface HostsSource {
  text: string;
  syntax: HostsSyntax;
  /** Where it came from, for messages: FERRY_HOSTS, a file, DISTCC_HOSTS. */
  origin: string;
}

/**
 * The hosts for a job's environment: FERRY_HOSTS, else a hosts file (# comments allowed), else
 * DISTCC_HOSTS in distcc's syntax. An empty text means no hosts.
 */
export function hostsSource(env: NodeJS.ProcessEnv, read = (path: string) => readFileSync(path, 'utf8')): HostsSource {
  if (env.FERRY_HOSTS !== undefined) return { text: env.FERRY_HOSTS.trim(), syntax: 'ferry', origin: 'FERRY_HOSTS' };
  for (const file of hostsFiles(env)) {
    let text: string;
    try {
      text = read(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    return { text: text.replace(/#.*$/gm, '').trim().split(/\s+/).join(' '), syntax: 'ferry', origin: file };
  }
  if (env.DISTCC_HOSTS !== undefined) return { text: env.DISTCC_HOSTS.trim(), syntax: 'distcc', origin: 'DISTCC_HOSTS' };
  return { text: '', syntax: 'ferry', origin: 'none' };
}

export class HostPool {
  hosts: Host[] = [];
  text = '';
  config: HostsConfig = { remotes: [], localSlots: 0, notes: [] };

  constructor(private readonly context: Omit<HostContext, 'env'>, private readonly onChange: () => void) {}

  /** Switches to the hosts in `source` (throws a FerryError for a malformed text, changing nothing). */
  configure(source: HostsSource, env: NodeJS.ProcessEnv): void {
    const text = `${source.syntax}:${source.text}`;
    if (text === this.text) return;
    const config = parseHostsConfig(source.text, source.syntax);
    const specs = config.remotes;
    // A host listed again exactly as before keeps its connection; a changed entry starts afresh.
    const kept = new Map(this.hosts.map((h) => [JSON.stringify(h.spec), h]));
    const next = specs.map((spec) => {
      const key = JSON.stringify(spec);
      const existing = kept.get(key);
      kept.delete(key);
      return existing ?? new Host(spec, { ...this.context, env }, this.onChange);
    });
    for (const removed of kept.values()) removed.close();
    this.hosts = next;
    this.text = text;
    this.config = config;
    this.context.log(`hosts from ${source.origin}: ${source.text || '(none)'}`);
    for (const note of config.notes) this.context.log(`hosts: ${note}`);
  }

  close(): void {
    for (const host of this.hosts) host.close();
    this.hosts = [];
    this.text = '';
  }

  /** The hosts text in force, as the user wrote it. */
  get description(): string {
    return this.text.slice(this.text.indexOf(':') + 1);
  }
}
