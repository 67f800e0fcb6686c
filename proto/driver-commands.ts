/**
 * What `gcc -### …` prints: the commands gcc's driver would run, each after the variables it sets
 * for it. The coordinator preprocesses, and the worker compiles, with commands learnt from it
 * (coordinator/driver-template.ts, worker/compile-steps.ts); both fill per-job names into a command
 * learnt once with placeholders.
 */
import { execFile } from 'node:child_process';

/** Placeholder names: letters and digits only, so `-###` prints them unquoted and they never merge. */
export const token = (n: number) => `QzFerry${n}zQ`;
export const TOKEN_MARK = 'QzFerry';

/** One command of the driver: what to exec and the variables the driver set for it. */
export interface DriverCommand {
  argv: string[];
  /** KEY=VALUE, in the order the driver sets them. */
  env: string[];
}

const KNOWN_LINES = /^(Using built-in specs\.|Target: .*|Configured with: .*|Thread model: .*|Supported LTO compression algorithms: .*|gcc version .*)$/;
const ENV_LINE = /^([A-Z_][A-Z0-9_]*)=(.*)$/;

/** One command line of `-###`: arguments separated by spaces, quoted with "…" and \-escapes when needed. */
export function parseCommandLine(line: string): string[] | undefined {
  const args: string[] = [];
  let i = 0;
  while (i < line.length) {
    if (line[i] === ' ') {
      i++;
      continue;
    }
    let arg = '';
    if (line[i] === '"') {
      i++;
      for (;;) {
        if (i >= line.length) return undefined;
        const c = line[i++];
        if (c === '"') break;
        if (c === '\\') {
          if (i >= line.length) return undefined;
          arg += line[i++];
        } else {
          arg += c;
        }
      }
      if (i < line.length && line[i] !== ' ') return undefined;
    } else {
      while (i < line.length && line[i] !== ' ') arg += line[i++];
    }
    args.push(arg);
  }
  return args.length > 0 ? args : undefined;
}

/**
 * The commands of a `-###` run in order, each with the variables set before it (the driver keeps
 * what it set for later commands; a variable set again replaces its earlier value in place).
 * Variables printed after the last command are the linker's and are left out. Undefined when the
 * driver printed a line this does not know (a warning, an error) or a command it cannot parse.
 */
export function parseDriverCommands(stderr: string): DriverCommand[] | undefined {
  const commands: DriverCommand[] = [];
  const env: string[] = [];
  for (const line of stderr.split('\n')) {
    if (line === '') continue;
    if (line.startsWith(' ')) {
      const argv = parseCommandLine(line);
      if (!argv) return undefined;
      commands.push({ argv, env: [...env] });
    } else if (ENV_LINE.test(line)) {
      const name = line.slice(0, line.indexOf('=') + 1);
      const at = env.findIndex((e) => e.startsWith(name));
      if (at >= 0) env[at] = line;
      else env.push(line);
    } else if (!KNOWN_LINES.test(line)) {
      return undefined;
    }
  }
  return commands;
}

/** The command with the job's names put back: placeholder i becomes values[i]. */
export function instantiate(template: DriverCommand, values: readonly string[]): DriverCommand {
  const fill = (text: string) => {
    if (!text.includes(TOKEN_MARK)) return text;
    // No value holds a placeholder (the shapes refuse such names), and each placeholder ends in zQ,
    // so QzFerry1zQ never matches inside QzFerry10zQ: the order of replacement does not matter.
    for (let i = 0; i < values.length; i++) text = text.split(token(i)).join(values[i]);
    return text;
  };
  return { argv: template.argv.map(fill), env: template.env.map(fill) };
}

export function sameCommand(a: DriverCommand, b: DriverCommand): boolean {
  return a.argv.length === b.argv.length && a.argv.every((x, i) => x === b.argv[i]) && a.env.length === b.env.length && a.env.every((x, i) => x === b.env[i]);
}

/** Runs `driver -### args…` and returns its stderr (where -### prints). */
export type RunDriver = (argv: readonly string[], cwd: string, env: NodeJS.ProcessEnv) => Promise<string>;

export const runDriver: RunDriver = (argv, cwd, env) =>
  new Promise((resolve, reject) => {
    execFile(argv[0], [...argv.slice(1), '-###'], { cwd, env, timeout: 10_000, maxBuffer: 4 << 20 }, (err, _stdout, stderr) => {
      if (err) reject(err);
      else resolve(stderr);
    });
  });

/**
 * What was learnt per job shape. A shape is learnt from its second job on (a one-off never costs a
 * learning), in the background: until the answer is in, and when it is null (the shape keeps the
 * driver), lookups give undefined. The oldest shape makes room past `capacity`.
 */
export class LearntShapes<T> {
  private readonly entries = new Map<string, { seen: number; learning?: Promise<T | null>; settled?: T | null }>();

  constructor(private readonly capacity = 1024) {}

  /** The answer learnt for `key`; starts `learn` (which must not reject) at the key's second lookup. */
  lookup(key: string, learn: () => Promise<T | null>): T | undefined {
    let entry = this.entries.get(key);
    if (!entry) {
      if (this.entries.size >= this.capacity) this.entries.delete(this.entries.keys().next().value as string);
      entry = { seen: 0 };
      this.entries.set(key, entry);
    }
    entry.seen++;
    if (entry.settled) return entry.settled;
    if (!entry.learning && entry.seen >= 2) {
      const target = entry;
      target.learning = learn();
      void target.learning.then((answer) => {
        target.settled = answer;
      });
    }
    return undefined;
  }

  /** Resolves when every shape being learnt now is learnt (or refused). */
  async whenLearnt(): Promise<void> {
    await Promise.all([...this.entries.values()].map((e) => e.learning));
  }
}
