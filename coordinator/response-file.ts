/**
 * `@file` arguments, expanded on the initiator as gcc's driver (libiberty's expandargv) would:
 * the file's words replace the argument; quotes group, backslash escapes; nested @files expand
 * too. A file that cannot be read stays a literal argument, as with gcc.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

const MAX_DEPTH = 16;

/** Splits a response file's text into arguments (libiberty's buildargv). */
export function splitResponseFile(text: string): string[] {
  const args: string[] = [];
  let current = '';
  let inWord = false;
  let quote: '"' | "'" | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '\\' && i + 1 < text.length) {
      current += text[++i];
      inWord = true;
    } else if (quote) {
      if (c === quote) quote = undefined;
      else current += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) args.push(current);
      current = '';
      inWord = false;
    } else {
      current += c;
      inWord = true;
    }
  }
  if (inWord) args.push(current);
  return args;
}

export type ReadText = (path: string) => string | undefined;

const readOrUndefined: ReadText = (path) => {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined; // gcc keeps an unreadable @file as a plain argument.
  }
};

/** argv with every readable @file replaced by its arguments, relative to `cwd`. */
export function expandResponseFiles(argv: readonly string[], cwd: string, read: ReadText = readOrUndefined, depth = 0): string[] {
  if (!argv.some((a) => a.startsWith('@'))) return [...argv];
  const out: string[] = [];
  for (const arg of argv) {
    const text = arg.length > 1 && arg.startsWith('@') && depth < MAX_DEPTH ? read(resolve(cwd, arg.slice(1))) : undefined;
    if (text === undefined) out.push(arg);
    else out.push(...expandResponseFiles(splitResponseFile(text), cwd, read, depth + 1));
  }
  return out;
}
