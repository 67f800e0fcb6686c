/**
 * `ferry monitor`: a live view of a build, like distccmon-text: each host with the jobs it is
 * compiling, and the whole build's progress. It redraws in place on a terminal and prints one
 * line per update elsewhere (a log, a pipe, a dumb terminal).
 */
import type { CoordinatorStatus__Output } from '../proto/generated/ferry/coordinator/v1/CoordinatorStatus';
import { Control } from './control';

export interface MonitorView {
  width: number;
  /** Jobs finished over the last few seconds, per second. */
  rate: number;
}

function fit(text: string, width: number): string {
  return text.length <= width ? text : `${text.slice(0, Math.max(0, width - 1))}…`;
}

function bar(used: number, total: number, width: number): string {
  const filled = total > 0 ? Math.min(width, Math.round((used / total) * width)) : 0;
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
}

/** The picture for one status: pure, so it can be tested line by line. */
export function renderMonitor(status: CoordinatorStatus__Output, view: MonitorView): string[] {
  const lines: string[] = [];
  const w = Math.max(40, view.width);
  const running = status.hostStatus.reduce((n, h) => n + h.running.length, 0) + status.localRunning;
  lines.push(
    fit(
      `ferry ${status.version}  done ${status.jobsDone}  compiling ${running}  waiting ${status.queuedJobs}  ${view.rate.toFixed(1)} jobs/s`,
      w,
    ),
  );
  lines.push('');
  for (const host of status.hostStatus) {
    const busy = Math.max(host.inUse, host.workerRunning + host.workerQueued);
    const others = busy - host.inUse;
    const head = `${host.name.padEnd(20)} ${host.state.padEnd(10)} ${bar(host.inUse, host.slots, 16)} ${host.inUse}/${host.slots}`;
    lines.push(fit(`${head}${others > 0 ? `  (+${others} from other initiators)` : ''}  done ${host.jobsDone}${host.failures ? `  failed ${host.failures}` : ''}`, w));
    if (host.state !== 'up' && host.lastError) lines.push(fit(`    ${host.lastError}`, w));
    for (const job of [...host.running].sort((a, b) => b.millis - a.millis)) {
      lines.push(fit(`    ${(job.millis / 1000).toFixed(1).padStart(6)} s  ${job.source}`, w));
    }
  }
  if (status.localSlots > 0) {
    lines.push(fit(`${'localhost'.padEnd(20)} ${'local'.padEnd(10)} ${bar(status.localRunning, status.localSlots, 16)} ${status.localRunning}/${status.localSlots}`, w));
  }
  if (status.hostStatus.length === 0) lines.push('no hosts yet: they are read from the first compile (FERRY_HOSTS)');
  return lines;
}

/** One line per update, for output that is not a terminal. */
export function renderMonitorLine(status: CoordinatorStatus__Output, view: MonitorView): string {
  const hosts = status.hostStatus.map((h) => `${h.name} ${h.state} ${h.inUse}/${h.slots}`).join(', ');
  return `${new Date().toISOString()} done ${status.jobsDone} waiting ${status.queuedJobs} ${view.rate.toFixed(1)} jobs/s | ${hosts}`;
}

/** Runs until Ctrl-C (or the coordinator stops). Returns the exit status. */
export async function runMonitor(options: { once?: boolean } = {}): Promise<number> {
  const control = Control.open();
  if (!control) {
    process.stderr.write('ferry monitor: no coordinator is running; it starts with the first compile of a build\n');
    return 1;
  }
  const tty = process.stdout.isTTY === true && process.env.TERM !== 'dumb';
  const history: Array<{ at: number; done: number }> = [];
  let drawn = 0;
  const draw = (status: CoordinatorStatus__Output) => {
    const now = Date.now();
    history.push({ at: now, done: status.jobsDone });
    while (history.length > 1 && now - history[0].at > 5000) history.shift();
    const span = (now - history[0].at) / 1000;
    const rate = span > 0 ? (status.jobsDone - history[0].done) / span : 0;
    const view = { width: process.stdout.columns || 100, rate };
    if (!tty) {
      process.stdout.write(`${renderMonitorLine(status, view)}\n`);
      return;
    }
    const lines = renderMonitor(status, view);
    // Back to the top of the last picture, then each line cleared and rewritten: no flicker.
    let out = drawn > 0 ? `\x1b[${drawn}A\r` : '';
    for (const line of lines) out += `\x1b[2K${line}\n`;
    for (let i = lines.length; i < drawn; i++) out += '\x1b[2K\n';
    if (drawn > lines.length) out += `\x1b[${drawn - lines.length}A`;
    process.stdout.write(out);
    drawn = lines.length;
  };
  const stream = control.monitor(0, (status) => {
    draw(status);
    if (options.once) stream.cancel();
  });
  const onSigint = () => stream.cancel();
  process.once('SIGINT', onSigint);
  try {
    await stream.done;
  } finally {
    process.off('SIGINT', onSigint);
    control.close();
  }
  return 0;
}
