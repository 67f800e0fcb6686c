/** Text renderings of status and stats for a terminal. */
import type { CoordinatorStatus__Output } from '../proto/generated/ferry/coordinator/v1/CoordinatorStatus';
import type { Stats__Output } from '../proto/generated/ferry/coordinator/v1/Stats';

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${(n / (1 << 30)).toFixed(2)} GiB`;
}

export function formatStatus(status: CoordinatorStatus__Output): string {
  const lines = [`coordinator ${status.version}, pid ${status.pid}, since ${status.started}`];
  lines.push(`hosts: ${status.hosts || '(none configured: set FERRY_HOSTS)'}`);
  for (const note of status.notes) lines.push(`  note: ${note}`);
  lines.push(`jobs: ${status.jobsDone} done, ${status.runningJobs} in hand, ${status.queuedJobs} waiting for a slot`);
  for (const host of status.hostStatus) {
    const others = Math.max(0, host.workerRunning + host.workerQueued - host.inUse);
    lines.push(
      `  ${host.name.padEnd(24)} ${host.state.padEnd(10)} slots ${host.inUse}/${host.slots}${others ? ` (+${others} of other initiators)` : ''}` +
        `  done ${host.jobsDone}  failed ${host.failures}${host.workerVersion ? `  worker ${host.workerVersion}` : ''}`,
    );
    if (host.lastError) lines.push(`    last error: ${host.lastError}`);
    const compilers = host.compilers.map((c) => c.name).join(' ');
    if (compilers) lines.push(`    compilers: ${compilers}`);
    for (const mismatch of host.compilerMismatches) lines.push(`    skipped for ${mismatch}`);
    for (const job of host.running) lines.push(`    compiling ${job.source} (${(job.millis / 1000).toFixed(1)} s)`);
  }
  if (status.localSlots > 0) lines.push(`  ${'localhost'.padEnd(24)} ${'local'.padEnd(10)} slots ${status.localRunning}/${status.localSlots}`);
  return lines.join('\n');
}

export function formatStats(stats: Stats__Output): string {
  const jobs = stats.jobs!;
  const total = jobs.remote + jobs.local;
  const lines = [
    `since ${stats.since}`,
    `jobs                  ${total}`,
    `  remote              ${jobs.remote}`,
    `  local               ${jobs.local}`,
    `  compile errors      ${jobs.compileErrors}`,
    `  preprocess errors   ${jobs.preprocessErrors}`,
    `  retried             ${jobs.retried}`,
    `  preprocessed without the driver ${jobs.preprocessedDirect ?? 0} (by a fork server ${jobs.preprocessedForked ?? 0})`,
    `  compiled again for exact messages ${jobs.exactReruns ?? 0}`,
  ];
  const reasons = Object.entries(stats.local).sort((a, b) => b[1] - a[1]);
  if (reasons.length) {
    lines.push('local, by reason');
    for (const [reason, n] of reasons) lines.push(`  ${reason.padEnd(20)}${n}`);
  }
  const hosts = Object.entries(stats.hosts);
  if (hosts.length) {
    lines.push('hosts');
    for (const [name, c] of hosts) {
      lines.push(`  ${name.padEnd(20)}${c.jobs} jobs, ${c.failures} failed (${c.retried ?? 0} sent to another host), ${c.compileErrors} compile errors`);
    }
  }
  const b = stats.bytes!;
  if (b.sourceRaw) {
    lines.push(
      `sources sent          ${bytes(b.sourceSent)} (${bytes(b.sourceRaw)} before LZ4, ratio ${(b.sourceRaw / Math.max(1, b.sourceSent)).toFixed(2)})`,
      `outputs received      ${bytes(b.outputReceived)} (${bytes(b.outputRaw)} unpacked)`,
    );
  }
  const t = stats.time!;
  const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
  lines.push(
    `time (summed)         preprocess ${seconds(t.preprocess)}, remote ${seconds(t.remote)}: ` +
      `compiling ${seconds(t.remoteCompile)}, transfer and waiting ${seconds(Math.max(0, t.remote - t.remoteCompile))}`,
  );
  return lines.join('\n');
}
