/** How the compiler's messages must look to the user: colours, source excerpts. */
import { readFile, stat } from 'node:fs/promises';
import type { LaunchRequest__Output } from '../proto/generated/ferry/launcher/v1/LaunchRequest';

/** The user's terminal would show colours: stderr is a tty, no colour option given, colours not disabled. */
export function wantsColour(request: Pick<LaunchRequest__Output, 'stderrIsTty' | 'argv'>, env: NodeJS.ProcessEnv): boolean {
  if (!request.stderrIsTty || env.TERM === 'dumb' || env.GCC_COLORS === '') return false;
  return !request.argv.some((a) => a.startsWith('-fdiagnostics-color') || a === '-fno-diagnostics-color');
}

/** gcc prints source excerpts under diagnostics unless told not to, or unless it writes JSON/SARIF. */
export function wantsExcerpts(compileArgs: readonly string[]): boolean {
  let excerpts = true;
  for (const arg of compileArgs) {
    if (arg === '-fno-diagnostics-show-caret') excerpts = false;
    else if (arg === '-fdiagnostics-show-caret') excerpts = true;
    else if (arg.startsWith('-fdiagnostics-format=') && arg !== '-fdiagnostics-format=text') excerpts = false;
  }
  return excerpts;
}

const MAX_EXCERPT_FILE_BYTES = 16 << 20;

/** A file a worker asks for, for source excerpts: regular files of reasonable size only. */
export async function readSourceFile(path: string): Promise<Buffer | undefined> {
  try {
    const info = await stat(path);
    if (!info.isFile() || info.size > MAX_EXCERPT_FILE_BYTES) return undefined;
    return await readFile(path);
  } catch {
    return undefined; // Unreadable: the diagnostics go without its lines, as gcc's would.
  }
}
