/**
 * ferry-worker's settings: defaults, then /etc/ferry/worker.conf (`key = value` lines, `#` comments),
 * then the command line. Everything here is pure; main.ts reads the file and the options.
 */
import { isAbsolute, normalize } from 'node:path';
import { FerryError } from '../proto/errors';
import { isCompilerName } from './compilers';
import { DEFAULT_PORT, parseListenAddress, type ListenAddress } from './listen';

export const DEFAULT_CONFIG_PATH = '/etc/ferry/worker.conf';

export interface WorkerSettings {
  listen: ListenAddress;
  /** 0: one per core. */
  slots: number;
  /** Compiler names to serve; undefined: every compiler found on PATH. */
  allow?: string[];
  /** Parent of the job directories; undefined: /dev/shm when it is a tmpfs, else $TMPDIR or /tmp. */
  tmpdir?: string;
  maxSourceMb: number;
  maxCompressedSourceMb: number;
  maxObjectMb: number;
  jobTimeoutSec: number;
  /** 0: as many as there are slots. */
  maxJobsPerConnection: number;
  /** Group that owns the Unix socket; undefined: the worker's own group. */
  socketGroup?: string;
  /** Sysroots a job may name with --sysroot/-isysroot; empty: none. */
  allowedSysroots: string[];
  /** 'learn': gcc jobs run cc1 and as directly once their commands are learnt; 'always': through gcc's driver. */
  gccDriver: 'learn' | 'always';
}

export const DEFAULT_SETTINGS: WorkerSettings = {
  listen: { kind: 'tcp', host: '127.0.0.1', port: DEFAULT_PORT },
  slots: 0,
  maxSourceMb: 256,
  // Chunks travel raw when LZ4 does not shrink them, so the compressed size never exceeds the source by much.
  maxCompressedSourceMb: 256,
  maxObjectMb: 512,
  jobTimeoutSec: 30 * 60,
  maxJobsPerConnection: 0,
  allowedSysroots: [],
  gccDriver: 'learn',
};

export type SettingsPatch = Partial<WorkerSettings>;

/** One configuration key: its command-line flag, what it means, and how its value is read. */
export interface KeySpec {
  key: string;
  /** Command-line flag without the dashes. */
  flag: string;
  help: string;
  /** A correct line, for error messages ("slots = 8"). */
  example: string;
  /** Returns the settings the value sets, or throws an Error (a FerryError when it has advice) saying what is wrong. */
  parse: (value: string) => SettingsPatch;
}

function wholeNumber(value: string, min: number, what: string): number {
  if (!/^\d+$/.test(value) || Number(value) < min || !Number.isSafeInteger(Number(value))) {
    throw new Error(`${what} must be a whole number${min > 0 ? ` of at least ${min}` : ''}, not "${value}"`);
  }
  return Number(value);
}

function list(value: string): string[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

function absolutePath(value: string, what: string): string {
  if (!isAbsolute(value) || value.includes('\0')) throw new Error(`${what} must be an absolute path, not "${value}"`);
  return normalize(value).replace(/(.)\/+$/, '$1');
}

export const KEYS: readonly KeySpec[] = [
  {
    key: 'listen',
    flag: 'listen',
    help: `unix:/path, 127.0.0.1:PORT or [::1]:PORT (default 127.0.0.1:${DEFAULT_PORT})`,
    example: 'listen = unix:/run/ferry/worker.sock',
    parse: (v) => ({ listen: parseListenAddress(v) }),
  },
  {
    key: 'slots',
    flag: 'slots',
    help: 'jobs compiling at once; 0 means one per core (default 0)',
    example: 'slots = 8',
    parse: (v) => ({ slots: wholeNumber(v, 0, 'slots') }),
  },
  {
    key: 'allow',
    flag: 'allow',
    help: 'comma-separated compiler names to serve (default: every gcc/g++/cc/c++/clang/clang++ on PATH)',
    example: 'allow = gcc,g++,clang,clang++',
    parse: (v) => {
      const names = list(v);
      if (names.length === 0) throw new Error('allow names no compiler (leave the key out to serve every compiler on PATH)');
      const bad = names.find((n) => !isCompilerName(n));
      if (bad) throw new Error(`"${bad}" is not a compiler name (gcc, g++, cc, c++, clang, clang++, with an optional target prefix and version)`);
      return { allow: names };
    },
  },
  {
    key: 'tmpdir',
    flag: 'tmpdir',
    help: 'where private job directories are made (default: /dev/shm when it is a tmpfs, else $TMPDIR or /tmp)',
    example: 'tmpdir = /var/tmp',
    parse: (v) => ({ tmpdir: absolutePath(v, 'tmpdir') }),
  },
  {
    key: 'max_source_mb',
    flag: 'max-source-mb',
    help: `largest preprocessed source, uncompressed, MiB (default ${DEFAULT_SETTINGS.maxSourceMb})`,
    example: 'max_source_mb = 256',
    parse: (v) => ({ maxSourceMb: wholeNumber(v, 1, 'max_source_mb') }),
  },
  {
    key: 'max_compressed_source_mb',
    flag: 'max-compressed-source-mb',
    help: `largest source as sent (LZ4), MiB (default ${DEFAULT_SETTINGS.maxCompressedSourceMb})`,
    example: 'max_compressed_source_mb = 256',
    parse: (v) => ({ maxCompressedSourceMb: wholeNumber(v, 1, 'max_compressed_source_mb') }),
  },
  {
    key: 'max_object_mb',
    flag: 'max-object-mb',
    help: `largest output file (object, .dwo, assembly), MiB (default ${DEFAULT_SETTINGS.maxObjectMb})`,
    example: 'max_object_mb = 512',
    parse: (v) => ({ maxObjectMb: wholeNumber(v, 1, 'max_object_mb') }),
  },
  {
    key: 'job_timeout',
    flag: 'job-timeout',
    help: `seconds a job may take to arrive, and its compiler to run, before it is ended (default ${DEFAULT_SETTINGS.jobTimeoutSec})`,
    example: 'job_timeout = 1800',
    parse: (v) => ({ jobTimeoutSec: wholeNumber(v, 1, 'job_timeout') }),
  },
  {
    key: 'max_jobs_per_connection',
    flag: 'max-jobs-per-connection',
    help: 'jobs one client connection may have compiling or queued at once; more wait their turn; 0 means the number of slots (default 0)',
    example: 'max_jobs_per_connection = 4',
    parse: (v) => ({ maxJobsPerConnection: wholeNumber(v, 0, 'max_jobs_per_connection') }),
  },
  {
    key: 'socket_group',
    flag: 'socket-group',
    help: "group given the Unix socket (mode 0660): its members may submit jobs (default: the worker's own group)",
    example: 'socket_group = ferry',
    parse: (v) => {
      // POSIX portable user/group names, as useradd(8) accepts them.
      if (!/^[A-Za-z_][A-Za-z0-9_.-]*\$?$/.test(v) || v.length > 32) throw new Error(`"${v}" is not a group name`);
      return { socketGroup: v };
    },
  },
  {
    key: 'allowed_sysroots',
    flag: 'allowed-sysroots',
    help: 'comma-separated absolute paths jobs may name with --sysroot/-isysroot (default: none)',
    example: 'allowed_sysroots = /opt/sysroots/aarch64',
    parse: (v) => ({ allowedSysroots: list(v).map((p) => absolutePath(p, 'each allowed_sysroots entry')) }),
  },
  {
    key: 'gcc_driver',
    flag: 'gcc-driver',
    help: "learn: gcc jobs run cc1 and as directly, as gcc's driver would, once their commands are learnt from gcc -###; always: every job through the driver (default learn)",
    example: 'gcc_driver = learn',
    parse: (v) => {
      if (v !== 'learn' && v !== 'always') throw new Error(`gcc_driver must be learn or always, not "${v}"`);
      return { gccDriver: v };
    },
  },
];

const BY_KEY = new Map(KEYS.map((k) => [k.key, k]));

/** Edit distance, to suggest the key a typo meant. */
function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
      diagonal = above;
    }
  }
  return row[b.length];
}

export function closestKey(key: string): string | undefined {
  let best: { key: string; d: number } | undefined;
  for (const spec of KEYS) {
    const d = distance(key.toLowerCase().replace(/-/g, '_'), spec.key);
    if (!best || d < best.d) best = { key: spec.key, d };
  }
  return best && best.d <= Math.max(2, Math.floor(best.key.length / 3)) ? best.key : undefined;
}

/** The advice an error already carries (listen's explains why only loopback), then how to write the value. */
function withAdvice(err: unknown, how: string): string {
  return err instanceof FerryError && err.hint ? `${err.hint} ${how}` : how;
}

/** Reads one command-line option's value with its key's parser; errors name the option. */
export function parseOption(spec: KeySpec, value: string): SettingsPatch {
  try {
    return spec.parse(value);
  } catch (err) {
    throw new FerryError('worker-option-invalid', `--${spec.flag} ${value}: ${(err as Error).message}`,
      err instanceof FerryError && err.hint ? err.hint : `Write it as --${spec.flag} ${spec.example.split(' = ')[1]}.`);
  }
}

function configError(file: string, line: number, message: string, hint: string): FerryError {
  return new FerryError('worker-config-invalid', `${file}:${line}: ${message}`, hint);
}

/** Parses a worker.conf text. Throws a FerryError naming the file and line, and saying what to write instead. */
export function parseWorkerConfig(text: string, file: string): SettingsPatch {
  const settings: SettingsPatch = {};
  const seen = new Map<string, number>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const lineNo = i + 1;
    // A `#` at the start or after white space begins a comment (paths may contain `#` elsewhere).
    const line = lines[i].replace(/(^|\s)#.*$/, '').trim();
    if (!line) continue;
    const eq = line.indexOf('=');
    if (eq < 0) {
      throw configError(file, lineNo, `"${line}" is not a "key = value" line`, 'Write settings as "key = value", e.g. "slots = 8"; start comments with #.');
    }
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    const spec = BY_KEY.get(key);
    if (!spec) {
      const near = closestKey(key);
      throw configError(file, lineNo, `unknown key "${key}"`,
        `${near ? `Did you mean "${near}"? ` : ''}Known keys: ${KEYS.map((k) => k.key).join(', ')}.`);
    }
    const earlier = seen.get(key);
    if (earlier !== undefined) {
      throw configError(file, lineNo, `"${key}" is set again (first set on line ${earlier})`, `Keep one "${key} = …" line.`);
    }
    seen.set(key, lineNo);
    try {
      Object.assign(settings, spec.parse(value));
    } catch (err) {
      throw configError(file, lineNo, (err as Error).message, withAdvice(err, `Write it as "${spec.example}".`));
    }
  }
  return settings;
}

/** Defaults, overridden by the config file, overridden by the command line. */
export function mergeSettings(fromFile: SettingsPatch, fromCommandLine: SettingsPatch): WorkerSettings {
  const merged: WorkerSettings = { ...DEFAULT_SETTINGS };
  for (const patch of [fromFile, fromCommandLine]) {
    for (const [name, value] of Object.entries(patch)) {
      if (value !== undefined) (merged as unknown as Record<string, unknown>)[name] = value;
    }
  }
  return merged;
}

/**
 * Which config file to read: the one named with --config (it must exist), none with --no-config,
 * else the default path when it exists.
 */
export function chooseConfigPath(option: string | boolean | undefined, exists: (path: string) => boolean): string | undefined {
  if (option === false) return undefined;
  if (typeof option === 'string') {
    if (!exists(option)) {
      throw new FerryError('worker-config-missing', `config file ${option} does not exist`,
        `Create it (a commented example is worker/worker.conf in the Ferry sources), or leave out --config to use ${DEFAULT_CONFIG_PATH} when it exists.`);
    }
    return option;
  }
  return exists(DEFAULT_CONFIG_PATH) ? DEFAULT_CONFIG_PATH : undefined;
}

/** Slots and the per-connection cap with their 0 = automatic values resolved. */
export function effectiveCounts(settings: Pick<WorkerSettings, 'slots' | 'maxJobsPerConnection'>, cores: number): { slots: number; perConnection: number } {
  const slots = settings.slots > 0 ? settings.slots : Math.max(1, cores);
  return { slots, perConnection: settings.maxJobsPerConnection > 0 ? settings.maxJobsPerConnection : slots };
}
