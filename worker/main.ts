/** ferry-worker: compiles preprocessed sources for Ferry coordinators that reach it through SSH. */
import { availableParallelism } from 'node:os';
import { Command, InvalidArgumentError } from 'commander';
import { errorMessage } from '../proto/errors';
import { FERRY_VERSION } from '../proto/version';
import { DEFAULT_LIMITS } from './compile';
import { discoverCompilerNames, loadCompilers } from './compilers';
import { DEFAULT_PORT, parseListenAddress } from './listen';
import { startWorker } from './server';

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive whole number');
  return n;
}

async function main(argv: string[]): Promise<void> {
  const cores = availableParallelism();
  const program = new Command('ferry-worker')
    .description('Compile preprocessed C/C++ sources for Ferry. Listens on loopback or a Unix socket only; clients come through SSH.')
    .version(FERRY_VERSION)
    .option('--listen <address>', `127.0.0.1:PORT, [::1]:PORT or unix:/path`, `127.0.0.1:${DEFAULT_PORT}`)
    .option('--slots <n>', 'jobs compiling at once (default: number of cores)', positiveInt, cores)
    .option('--allow <compilers>', 'comma-separated compiler names to serve (default: every gcc/g++/cc/c++/clang on PATH)')
    .option('--tmpdir <dir>', 'where private job directories are made (default: $TMPDIR or /tmp)')
    .option('--max-source-mb <n>', 'largest preprocessed source accepted, MiB', positiveInt, DEFAULT_LIMITS.maxSourceBytes >> 20)
    .option('--job-timeout <seconds>', 'kill a compile that runs longer', positiveInt, DEFAULT_LIMITS.jobTimeoutMs / 1000)
    .showHelpAfterError();
  program.parse(argv);
  const options = program.opts<{
    listen: string;
    slots: number;
    allow?: string;
    tmpdir?: string;
    maxSourceMb: number;
    jobTimeout: number;
  }>();

  const listen = parseListenAddress(options.listen);
  const names = options.allow ? options.allow.split(',').map((s) => s.trim()).filter(Boolean) : discoverCompilerNames();
  const compilers = await loadCompilers(names);
  for (const problem of compilers.problems) process.stderr.write(`ferry-worker: warning: ${problem}\n`);
  if (compilers.byName.size === 0) {
    throw new Error('no usable compiler: install gcc or clang, or name them with --allow gcc,g++');
  }
  const worker = await startWorker({
    listen,
    slots: options.slots,
    compilers,
    limits: { ...DEFAULT_LIMITS, maxSourceBytes: options.maxSourceMb << 20, jobTimeoutMs: options.jobTimeout * 1000 },
    tmpBase: options.tmpdir,
  });
  process.stdout.write(
    `ferry-worker ${FERRY_VERSION} listening on ${worker.address} (${options.slots} slots; compilers: ${[...compilers.byName.keys()].join(', ')})\n`,
  );
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`ferry-worker: ${signal}, stopping\n`);
    worker.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`ferry-worker: ${errorMessage(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main(process.argv).catch((err: unknown) => {
  process.stderr.write(`ferry-worker: ${errorMessage(err)}\n`);
  process.exit(2);
});
