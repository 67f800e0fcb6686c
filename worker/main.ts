/** ferry-worker: compiles preprocessed sources for Ferry coordinators that reach it through SSH. */
import { existsSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { Command } from 'commander';
import { FerryError, errorMessage } from '../proto/errors';
import { FERRY_VERSION } from '../proto/version';
import { DEFAULT_LIMITS, type WorkerLimits } from './compile';
import { discoverCompilerNames, loadCompilers } from './compilers';
import {
  chooseConfigPath,
  DEFAULT_CONFIG_PATH,
  effectiveCounts,
  KEYS,
  mergeSettings,
  parseOption,
  parseWorkerConfig,
  type KeySpec,
  type SettingsPatch,
  type WorkerSettings,
} from './config';
import { startWorker } from './server';

const MIB = 1 << 20;

function limitsOf(settings: WorkerSettings, perConnection: number): WorkerLimits {
  return {
    ...DEFAULT_LIMITS,
    maxSourceBytes: settings.maxSourceMb * MIB,
    maxCompressedSourceBytes: settings.maxCompressedSourceMb * MIB,
    maxOutputBytes: settings.maxObjectMb * MIB,
    jobTimeoutMs: settings.jobTimeoutSec * 1000,
    maxJobsPerConnection: perConnection,
  };
}

function readConfig(path: string | undefined): SettingsPatch {
  if (!path) return {};
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new FerryError('worker-config-unreadable', `cannot read ${path}: ${errorMessage(err)}`, 'Check the file and its permissions, or name another with --config.');
  }
  return parseWorkerConfig(text, path);
}

async function main(argv: string[]): Promise<void> {
  const given = new Map<KeySpec, string>();
  const program = new Command('ferry-worker')
    .description(
      'Compile preprocessed C/C++ sources for Ferry. Listens on loopback or a Unix socket only; clients come through SSH.\n' +
        `Settings come from ${DEFAULT_CONFIG_PATH} (when it exists) and the options below, which override it.`,
    )
    .version(FERRY_VERSION)
    .option('--config <file>', `read settings from this file instead of ${DEFAULT_CONFIG_PATH}`)
    .option('--no-config', `ignore ${DEFAULT_CONFIG_PATH}`)
    .showHelpAfterError();
  // One option per configuration key, read after parsing by the same parser as the file.
  for (const spec of KEYS) {
    program.option(`--${spec.flag} <value>`, spec.help, (value: string) => {
      given.set(spec, value);
      return value;
    });
  }
  program.parse(argv);
  const fromCommandLine: SettingsPatch = {};
  for (const [spec, value] of given) Object.assign(fromCommandLine, parseOption(spec, value));
  const { config } = program.opts<{ config?: string | boolean }>();

  const configPath = chooseConfigPath(config, existsSync);
  const settings = mergeSettings(readConfig(configPath), fromCommandLine);
  const counts = effectiveCounts(settings, availableParallelism());
  const names = settings.allow ?? discoverCompilerNames();
  const compilers = await loadCompilers(names);
  for (const problem of compilers.problems) process.stderr.write(`ferry-worker: warning: ${problem}\n`);
  if (compilers.byName.size === 0) {
    throw new FerryError('no-compiler', 'no usable compiler', 'Install gcc or clang, or name them with allow = gcc,g++ (--allow gcc,g++).');
  }
  const worker = await startWorker({
    listen: settings.listen,
    slots: counts.slots,
    compilers,
    limits: limitsOf(settings, counts.perConnection),
    argPolicy: { allowedSysroots: settings.allowedSysroots },
    socketGroup: settings.listen.kind === 'unix' ? settings.socketGroup : undefined,
    tmpBase: settings.tmpdir,
    compileWithoutDriver: settings.gccDriver === 'learn',
  });
  process.stdout.write(
    `ferry-worker ${FERRY_VERSION} listening on ${worker.address} (${counts.slots} slots; ` +
      `compilers: ${[...compilers.byName.keys()].join(', ')}; config: ${configPath ?? 'none'})\n`,
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
