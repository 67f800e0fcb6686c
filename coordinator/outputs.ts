/** The files a remote compile brings back, and where they go here. */
import { isPlainRelativePath, type RemotePlan } from './classify';

export interface OutputFile {
  kind: 'OBJECT' | 'ASSEMBLY' | 'SPLIT_DWARF';
  /** The name the worker gives it under its job directory. */
  name: string;
  /** Where it goes here, as the compiler would have named it. */
  path: string;
}

/**
 * A relative output keeps its name on the worker (gcc records the .dwo's name as derived from it);
 * an absolute one is renamed, which only matters for split DWARF, and the classifier keeps those
 * local.
 */
export function expectedOutputs(plan: Pick<RemotePlan, 'output' | 'outputKind' | 'splitDwarf'>): OutputFile[] {
  const name = isPlainRelativePath(plan.output) ? plan.output : plan.outputKind === 'OBJECT' ? 'out.o' : 'out.s';
  const files: OutputFile[] = [{ kind: plan.outputKind, name, path: plan.output }];
  if (plan.splitDwarf) files.push({ kind: 'SPLIT_DWARF', name: plan.splitDwarf, path: plan.splitDwarf });
  return files;
}
