/**
 * Where the coordinator and the launcher meet. cli/native/launcher.c computes the same runtime
 * directory (keep the two in step): FERRY_RUNTIME_DIR, else $XDG_RUNTIME_DIR/ferry, else /tmp/ferry-<uid>.
 */
import { homedir } from 'node:os';
import { join } from 'node:path';

export interface RuntimePaths {
  dir: string;
  socket: string;
  /** gRPC control service for `ferry status`, `stats`, `stop`. */
  control: string;
  log: string;
  /** Lines appended by the launcher for each compile it ran locally because no coordinator answered. */
  launcherFallbacks: string;
  /** Per-host tunnel sockets live here. */
  tunnels: string;
}

export function runtimeDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.FERRY_RUNTIME_DIR) return env.FERRY_RUNTIME_DIR;
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'ferry');
  return `/tmp/ferry-${process.getuid ? process.getuid() : 0}`;
}

export function runtimePaths(env: NodeJS.ProcessEnv = process.env): RuntimePaths {
  const dir = runtimeDir(env);
  return {
    dir,
    socket: join(dir, 'coordinator.sock'),
    control: join(dir, 'control.sock'),
    log: join(dir, 'coordinator.log'),
    launcherFallbacks: join(dir, 'launcher-fallbacks'),
    tunnels: join(dir, 'tunnels'),
  };
}

/** Statistics outlive the runtime directory (a tmpfs): FERRY_STATE_DIR, else XDG_STATE_HOME/ferry. */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.FERRY_STATE_DIR) return env.FERRY_STATE_DIR;
  const base = env.XDG_STATE_HOME || join(env.HOME || homedir(), '.local', 'state');
  return join(base, 'ferry');
}
