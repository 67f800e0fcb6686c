/**
 * Which compiler arguments a worker accepts in a job header. The worker adds the input and the
 * output itself; everything a client sends must be an option that neither loads or runs code nor
 * writes files outside the job directory. The coordinator keeps such compiles local anyway
 * (coordinator/classify.ts); this is the worker's own defence against any other client.
 */
import { isAbsolute, normalize } from 'node:path';
import { FerryError } from '../proto/errors';

export interface ArgPolicy {
  /** Normalised absolute paths a job may name with --sysroot / -isysroot. */
  allowedSysroots: readonly string[];
}

export interface Refusal {
  /** The argument as the client sent it (with its value, for separate-valued options); absent for the whole line. */
  arg?: string;
  /** What is wrong, in a sentence for the client. */
  message: string;
  /** Refused only because allowed_sysroots does not list it. */
  sysroot?: boolean;
}

/** An argument as shown in a message: statuses travel in HTTP/2 trailers, which have a size limit. */
const shorten = (arg: string) => (arg.length > 200 ? `${arg.slice(0, 200)}…` : arg);
const refused = (arg: string, why: string): Refusal => ({ arg, message: `argument "${shorten(arg)}" is refused: it ${why}` });

/** Far more than any real compile line; keeps a hostile header from costing much to check or spawn. */
const MAX_ARGS = 4096;
const MAX_ARGS_BYTES = 1 << 20;

interface Rule {
  test: (arg: string) => boolean;
  why: string;
}

const startsWith =
  (...prefixes: string[]) =>
  (arg: string) =>
    prefixes.some((p) => arg.startsWith(p));
const is =
  (...names: string[]) =>
  (arg: string) =>
    names.includes(arg);

/** Assembler options (after -Wa,) that write files: listings (-a…), dependency files, another output. */
function assemblerWritesFiles(arg: string): boolean {
  return arg
    .slice('-Wa,'.length)
    .split(',')
    .some((o) => o.startsWith('-a') || o.startsWith('--MD') || o.startsWith('-o') || o.startsWith('@'));
}

/** Ordered; the first rule that matches names the reason. Options not listed are accepted. */
const REFUSED: Rule[] = [
  { test: is('-'), why: 'reads the source from standard input (the worker supplies the input itself)' },
  { test: startsWith('-fplugin'), why: 'loads a compiler plugin' },
  { test: startsWith('-iplugindir'), why: 'chooses where compiler plugins are loaded from' },
  { test: startsWith('-fpass-plugin'), why: 'loads an LLVM pass plugin' },
  { test: is('-Xclang'), why: "passes options to clang's internals (-load runs code)" },
  { test: is('-mllvm'), why: 'passes options to LLVM, some of which write files' },
  { test: startsWith('-specs', '--specs'), why: 'reads a specs file, which can run programs' },
  { test: startsWith('-B'), why: 'makes the compiler run programs from another directory' },
  { test: startsWith('-wrapper'), why: 'runs the compiler under another program' },
  { test: startsWith('-fmodule'), why: 'uses a module cache or mapper outside the job (a mapper can run a program)' },
  { test: startsWith('-fdump'), why: 'writes compiler dumps' },
  { test: startsWith('-save-temps', '--save-temps'), why: 'writes intermediate files' },
  { test: startsWith('-fprofile', '-fauto-profile', '-fcs-profile', '-fbranch-probabilities', '-ftest-coverage'), why: 'reads or writes profile data files' },
  { test: is('--coverage'), why: 'writes coverage files' },
  { test: startsWith('-fcallgraph-info', '-fstack-usage'), why: 'writes extra files beside the output' },
  { test: is('-aux-info'), why: 'writes prototypes to a file' },
  { test: startsWith('-dumpdir', '-dumpbase'), why: 'chooses where auxiliary files are written' },
  { test: startsWith('-dump'), why: 'is a query, not a compile' },
  { test: startsWith('-M'), why: 'writes a dependency file (the initiator writes dependencies when it preprocesses)' },
  { test: (a) => a.startsWith('-Wp,') || a === '-Xpreprocessor', why: 'passes options to the preprocessor, which can write files' },
  { test: (a) => a.startsWith('-Wa,') && assemblerWritesFiles(a), why: 'makes the assembler write a listing or another file' },
  { test: is('-Xassembler'), why: 'passes options to the assembler, which can write listings' },
  { test: (a) => a.startsWith('-Wl,') || a === '-Xlinker', why: 'passes options to the linker, which a compile does not run' },
  { test: startsWith('-fsave-optimization-record', '-foptimization-record-file'), why: 'writes an optimisation record file' },
  { test: (a) => a.startsWith('-fopt-info') && a.includes('='), why: 'writes optimisation notes to a file' },
  { test: startsWith('-ftime-trace'), why: 'writes a trace file' },
  { test: startsWith('-fproc-stat-report', '-fcrash-diagnostics-dir'), why: 'writes files outside the job directory' },
  { test: startsWith('-fdiagnostics-add-output', '-fdiagnostics-set-output'), why: 'writes diagnostics to a file' },
  { test: startsWith('-o'), why: 'chooses an output path (the worker names outputs itself)' },
  { test: is('-E'), why: 'preprocesses only (the worker compiles; preprocessing happens on the initiator)' },
];

/** The sysroot a --sysroot/-isysroot argument names, and how many arguments it takes. */
function sysrootOf(args: readonly string[], i: number): { path: string | undefined; taken: number } | undefined {
  const arg = args[i];
  if (arg === '--sysroot' || arg === '-isysroot') return { path: args[i + 1], taken: 2 };
  if (arg.startsWith('--sysroot=')) return { path: arg.slice('--sysroot='.length), taken: 1 };
  if (arg.startsWith('-isysroot')) return { path: arg.slice('-isysroot'.length), taken: 1 };
  return undefined;
}

export function sysrootAllowed(path: string, allowed: readonly string[]): boolean {
  if (!isAbsolute(path)) return false;
  const normal = normalize(path).replace(/(.)\/+$/, '$1');
  return allowed.includes(normal);
}

/** The first argument a worker will not run, with why; undefined when every argument is acceptable. */
export function findRefusal(args: readonly string[], policy: ArgPolicy): Refusal | undefined {
  if (args.length > MAX_ARGS) return { message: `the job has ${args.length} arguments, more than the ${MAX_ARGS} a worker accepts` };
  const bytes = args.reduce((n, a) => n + Buffer.byteLength(a), 0);
  if (bytes > MAX_ARGS_BYTES) return { message: `the job's arguments are ${bytes} bytes, more than the ${MAX_ARGS_BYTES} a worker accepts` };
  let mode = false;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg.includes('\0')) return refused(JSON.stringify(arg).slice(1, -1), 'contains a NUL byte');
    const sysroot = sysrootOf(args, i);
    if (sysroot) {
      const shown = args.slice(i, i + sysroot.taken).join(' ');
      if (!sysroot.path) return refused(shown, 'names no system root');
      if (!sysrootAllowed(sysroot.path, policy.allowedSysroots)) {
        const allowed = policy.allowedSysroots.length ? `allowed here: ${policy.allowedSysroots.join(', ')}` : 'none is allowed here';
        return { ...refused(shown, `points the compiler at a system root this worker does not allow (${allowed}; allowed_sysroots)`), sysroot: true };
      }
      i += sysroot.taken - 1;
      continue;
    }
    // Before the non-option test: a response file is worth naming as such.
    if (arg.startsWith('@')) return refused(arg, 'reads a response file (expand it on the initiator)');
    if (!arg.startsWith('-')) {
      return { arg, message: `argument "${shorten(arg)}" is not an option: the worker supplies the input and output files itself` };
    }
    const rule = REFUSED.find((r) => r.test(arg));
    if (rule) return refused(arg, rule.why);
    if (arg === '-c' || arg === '-S') mode = true;
  }
  // Without -c or -S the driver would link, running the linker with whatever the job asked for.
  if (!mode) return { message: 'the job has neither -c nor -S: the worker compiles, it does not link' };
  return undefined;
}

/** Throws a FerryError naming the first argument the worker will not run. */
export function checkJobArgs(args: readonly string[], policy: ArgPolicy): void {
  const refusal = findRefusal(args, policy);
  if (!refusal) return;
  throw new FerryError(
    'forbidden-argument',
    refusal.message,
    refusal.sysroot
      ? "Add the system root to allowed_sysroots in the worker's worker.conf, or compile this file locally."
      : 'Compile this file locally (a job header carries options only; the worker adds the input and -o).',
  );
}
