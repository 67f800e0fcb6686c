import { constants } from 'node:os';

/** A shell-style exit status: the code, or 128 + the signal number for a process killed by a signal. */
export function exitStatus(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  const number = signal ? (constants.signals as Record<string, number>)[signal] : undefined;
  return 128 + (number ?? 0);
}
