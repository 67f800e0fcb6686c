/** `ferry jobs`: the -j for make or ninja that keeps every configured slot busy. */
import { availableParallelism } from 'node:os';
import type { CoordinatorStatus__Output } from '../proto/generated/ferry/coordinator/v1/CoordinatorStatus';
import { parseHostsConfig } from '../coordinator/hosts';
import { hostsSource } from '../coordinator/pool';

/**
 * Every remote slot and `localhost/N` slot, plus one job per local core: those jobs are being
 * preprocessed or waiting for a slot while the others compile, so no remote slot waits for work.
 * A host without `/N` counts with the slots its worker advertised (known once a compile reached it).
 */
export function suggestedJobs(
  env: NodeJS.ProcessEnv,
  status: CoordinatorStatus__Output | undefined,
  cores = availableParallelism(),
): { jobs: number; explanation: string } {
  const source = hostsSource(env);
  const config = parseHostsConfig(source.text, source.syntax);
  const parts: string[] = [];
  let remote = 0;
  for (const spec of config.remotes) {
    const advertised = status?.hostStatus.find((h) => h.name === spec.name)?.slots;
    const slots = spec.slots ?? advertised;
    if (slots === undefined) {
      parts.push(`${spec.name}: slots unknown until a compile reaches it (write ${spec.name}/N), counted as 0`);
      continue;
    }
    remote += slots;
    parts.push(`${spec.name}: ${slots}${spec.slots === undefined ? ' (advertised by its worker)' : ''}`);
  }
  const jobs = Math.max(1, remote + config.localSlots + cores);
  parts.push(`localhost: ${config.localSlots}`, `preprocessing and transfer overlap: ${cores} (cores here)`);
  return { jobs, explanation: `hosts from ${source.origin}: ${parts.join('; ')} -> -j${jobs}` };
}
