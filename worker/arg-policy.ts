/**
 * Which compiler arguments a worker accepts in a job header. The worker adds the input and the
 * output itself; everything a client sends must be an option that neither loads code nor reads or
 * writes files outside the job directory.
 */
import { FerryError } from '../proto/errors';

interface Refusal {
  test: (arg: string) => boolean;
  why: string;
}

const REFUSED: Refusal[] = [
  { test: (a) => a.startsWith('-fplugin') || a.startsWith('-iplugindir'), why: 'loads a compiler plugin' },
  { test: (a) => a.startsWith('-specs') || a.startsWith('--specs'), why: 'reads a specs file that can run programs' },
  { test: (a) => a.startsWith('-B'), why: 'makes the compiler run programs from another directory' },
  { test: (a) => a === '-wrapper' || a.startsWith('-wrapper'), why: 'runs the compiler under another program' },
  { test: (a) => a.startsWith('-fdump-') || a.startsWith('-save-temps') || a.startsWith('-dump'), why: 'writes extra files' },
  { test: (a) => a.startsWith('--sysroot') || a.startsWith('-isysroot'), why: 'points the compiler at another system root' },
  { test: (a) => a === '-o' || a.startsWith('-o'), why: 'chooses an output path (the worker names outputs itself)' },
  { test: (a) => a.startsWith('@'), why: 'reads a response file (expand it on the initiator)' },
  { test: (a) => a.startsWith('-Wa,') && /(^|,)-a/.test(a.slice(4)), why: 'writes an assembler listing' },
  { test: (a) => a.startsWith('-fprofile') || a === '--coverage' || a.startsWith('-ftest-coverage'), why: 'writes profiling files' },
  { test: (a) => a.startsWith('-fcallgraph-info') || a.startsWith('-fstack-usage'), why: 'writes extra files' },
];

/** Throws a FerryError naming the first argument the worker will not run. */
export function checkJobArgs(args: readonly string[]): void {
  for (const arg of args) {
    if (!arg.startsWith('-')) {
      throw new FerryError(
        'forbidden-argument',
        `argument "${arg}" is not an option: the worker supplies the input and output files itself`,
        'Send only options in the job header.',
      );
    }
    const refusal = REFUSED.find((r) => r.test(arg));
    if (refusal) {
      throw new FerryError('forbidden-argument', `argument "${arg}" is refused: it ${refusal.why}`, 'Compile this file locally.');
    }
  }
}
