/**
 * Preprocessing on the initiator. gcc's `-fdirectives-only` expands includes and directives but
 * leaves the source text (comments, macro uses, token positions) for the real compile, so the
 * remote compiler's diagnostics and DWARF columns match a local build (facts.md part 3). clang's
 * equivalent is `-frewrite-includes`: includes inlined, everything else left for the compile.
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { exitStatus } from '../proto/exit-status';
import type { RemotePlan } from './classify';

export interface Preprocessed {
  exitCode: number;
  source: Buffer;
  stderr: Buffer;
}

/** Flags the remote compile needs to read what the preprocessor wrote, as if it ran in `cwd`. */
export function remoteCompileArgs(plan: RemotePlan, cwd: string): string[] {
  if (plan.family === 'clang') {
    // clang records its own working directory as DW_AT_comp_dir; the worker's is a temporary one.
    const given = plan.compileArgs.some((a) => a.startsWith('-fdebug-compilation-dir') || a.startsWith('-ffile-compilation-dir'));
    return given ? plan.compileArgs : [...plan.compileArgs, `-fdebug-compilation-dir=${cwd}`];
  }
  return plan.preprocessed ? plan.compileArgs : [...plan.compileArgs, '-fdirectives-only'];
}

export function preprocessArgs(plan: RemotePlan): string[] {
  const mode = plan.family === 'clang' ? '-frewrite-includes' : '-fdirectives-only';
  return [...plan.cppArgs, '-E', mode, plan.source];
}

export async function preprocess(compilerPath: string, plan: RemotePlan, cwd: string, env: NodeJS.ProcessEnv, signal?: AbortSignal): Promise<Preprocessed> {
  if (plan.preprocessed) {
    // Already preprocessed (ccache with run_second_cpp=false, or a .i/.ii input): sent as is.
    return { exitCode: 0, source: await readFile(resolve(cwd, plan.source)), stderr: Buffer.alloc(0) };
  }
  return new Promise((resolvePromise, reject) => {
    const child = spawn(compilerPath, preprocessArgs(plan), { cwd, env, stdio: ['ignore', 'pipe', 'pipe'], signal });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.once('error', reject);
    child.once('close', (code, sig) =>
      resolvePromise({
        exitCode: exitStatus(code, sig),
        source: Buffer.concat(out),
        stderr: Buffer.concat(err),
      }),
    );
  });
}
