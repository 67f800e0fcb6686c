/**
 * The hosts in force. They come from the job's FERRY_HOSTS, else the first hosts file found; when
 * the text changes between builds the pool follows it, keeping connections to hosts still listed.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Host, type HostContext } from './host';
import { parseHosts } from './hosts';

export function hostsFiles(env: NodeJS.ProcessEnv): string[] {
  const configHome = env.XDG_CONFIG_HOME || join(env.HOME || homedir(), '.config');
  return [join(configHome, 'ferry', 'hosts'), '/etc/ferry/hosts'];
}

/** The hosts text for a job's environment: FERRY_HOSTS, else a hosts file (# comments allowed). */
export function hostsText(env: NodeJS.ProcessEnv, read = (path: string) => readFileSync(path, 'utf8')): string {
  if (env.FERRY_HOSTS !== undefined) return env.FERRY_HOSTS.trim();
  for (const file of hostsFiles(env)) {
    let text: string;
    try {
      text = read(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    return text.replace(/#.*$/gm, '').trim().split(/\s+/).join(' ');
  }
  return '';
}

export class HostPool {
  hosts: Host[] = [];
  text = '';

  constructor(private readonly context: Omit<HostContext, 'env'>, private readonly onChange: () => void) {}

  /** Switches to the hosts in `text` (throws a FerryError for a malformed text, changing nothing). */
  configure(text: string, env: NodeJS.ProcessEnv): void {
    if (text === this.text) return;
    const specs = parseHosts(text).filter((spec) => spec.kind !== 'local');
    const kept = new Map(this.hosts.map((h) => [h.name, h]));
    const next = specs.map((spec) => {
      const existing = kept.get(spec.name);
      kept.delete(spec.name);
      return existing ?? new Host(spec, { ...this.context, env }, this.onChange);
    });
    for (const removed of kept.values()) removed.close();
    this.hosts = next;
    this.text = text;
    this.context.log(`hosts: ${text || '(none)'}`);
  }

  close(): void {
    for (const host of this.hosts) host.close();
    this.hosts = [];
    this.text = '';
  }
}
