/**
 * Telling the user once per build that jobs run locally. A build is recognised by the session id
 * its compiler processes share; a pause of a minute without such jobs counts as a new build.
 */
export const QUIET_WINDOW_MS = 60_000;

export class Notices {
  private readonly last = new Map<string, { sid: number; at: number }>();

  /** True when this notice (by kind) should be printed for a job of session `sid` now. */
  shouldTell(kind: string, sid: number, now = Date.now()): boolean {
    const previous = this.last.get(kind);
    this.last.set(kind, { sid, at: now });
    return !previous || previous.sid !== sid || now - previous.at >= QUIET_WINDOW_MS;
  }
}
