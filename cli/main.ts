/**
 * `ferry <command>`: the user's commands. Compiles (`ferry gcc -c …`) never come here: the native
 * launcher hands them to the coordinator; it starts this only for the commands below.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { errorMessage } from '../proto/errors';
import { FERRY_VERSION } from '../proto/version';
import { classify } from '../coordinator/classify';
import { preprocessArgs, remoteCompileArgs } from '../coordinator/preprocess';
import { expandResponseFiles } from '../coordinator/response-file';
import { runtimePaths, stateDir } from '../coordinator/paths';
import { countLauncherFallbacks, StatsStore } from '../coordinator/stats';
import { runCoordinator } from '../coordinator/main';
import type { Stats__Output } from '../proto/generated/ferry/coordinator/v1/Stats';
import { Control } from './control';
import { formatStats, formatStatus } from './report';

function notRunning(): string {
  return `no coordinator is running (it starts with the first compile; logs: ${runtimePaths().log})`;
}

/** Statistics from the state file, for when no coordinator runs. */
function statsAtRest(): Stats__Output {
  const stats = StatsStore.read(join(stateDir(), 'stats.json'));
  let pending = '';
  try {
    pending = readFileSync(runtimePaths().launcherFallbacks, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  for (const [reason, n] of Object.entries(countLauncherFallbacks(pending))) {
    stats.jobs.local += n;
    stats.local[reason] = (stats.local[reason] ?? 0) + n;
  }
  return stats;
}

export function buildProgram(): Command {
  const program = new Command('ferry')
    .description(
      'Distributed C/C++ compiles over SSH.\n\n' +
        'Compile:   ferry gcc -c hello.c -o hello.o   (or CCACHE_PREFIX=ferry, or CMAKE_<LANG>_COMPILER_LAUNCHER=ferry)\n' +
        'Hosts:     FERRY_HOSTS="build1/16 build2/16"  (names from ~/.ssh/config; each runs ferry-worker)',
    )
    .version(FERRY_VERSION)
    .enablePositionalOptions()
    .showHelpAfterError();

  program
    .command('status')
    .description('show the coordinator, each host and the last jobs')
    .option('--json', 'print JSON')
    .option('--jobs <n>', 'how many recent jobs to list', '0')
    .action(async (options: { json?: boolean; jobs: string }) => {
      const control = Control.open();
      const status = await control?.status(Number(options.jobs));
      control?.close();
      if (!status) {
        if (options.json) process.stdout.write(`${JSON.stringify({ running: false })}\n`);
        else process.stdout.write(`${notRunning()}\n`);
        return;
      }
      if (options.json) {
        process.stdout.write(`${JSON.stringify({ running: true, ...status }, null, 2)}\n`);
        return;
      }
      process.stdout.write(`${formatStatus(status)}\n`);
      for (const job of status.recent) {
        process.stdout.write(`  ${job.finished}  ${job.where.padEnd(16)} ${job.source}${job.reason ? ` (${job.reason})` : ''}\n`);
      }
    });

  program
    .command('stats')
    .description('count jobs: remote, local by reason, per host, bytes and time')
    .option('--json', 'print JSON')
    .option('-z, --zero', 'reset the counters after printing them')
    .action(async (options: { json?: boolean; zero?: boolean }) => {
      const control = Control.open();
      let stats = await control?.stats(!!options.zero);
      control?.close();
      if (!stats) {
        stats = statsAtRest();
        if (options.zero) new StatsStore(join(stateDir(), 'stats.json'), runtimePaths().launcherFallbacks).zero();
      }
      process.stdout.write(options.json ? `${JSON.stringify(stats, null, 2)}\n` : `${formatStats(stats)}\n`);
    });

  program
    .command('stop')
    .description('stop the coordinator (the next compile starts it again)')
    .action(async () => {
      const control = Control.open();
      const reply = await control?.stop();
      control?.close();
      process.stdout.write(reply ? `stopped coordinator (pid ${reply.pid})\n` : `${notRunning()}\n`);
    });

  program
    .command('explain')
    .description('say whether a compile would be distributed, and why, without running it')
    .option('--json', 'print {"decision": "remote"|"local", "reason": "..."}')
    .argument('<command...>', 'the compiler command, e.g. gcc -c a.c -o a.o')
    .passThroughOptions()
    .allowUnknownOption()
    .action((command: string[], options: { json?: boolean }) => {
      const decision = classify(expandResponseFiles(command, process.cwd()));
      if (options.json) {
        const reason = decision.decision === 'local' ? `${decision.reason}: ${decision.detail}` : 'distributable';
        process.stdout.write(`${JSON.stringify({ decision: decision.decision, reason })}\n`);
      } else if (decision.decision === 'local') {
        process.stdout.write(`local: ${decision.reason} (${decision.detail})\n`);
      } else {
        const plan = decision.plan;
        process.stdout.write(
          `remote: ${plan.source} (${plan.language}${plan.preprocessed ? ', already preprocessed' : ''}) -> ${plan.output}\n` +
            `  preprocess here: ${[plan.compiler, ...preprocessArgs(plan)].join(' ')}\n` +
            `  compile remote:  ${[plan.compiler, ...remoteCompileArgs(plan, process.cwd())].join(' ')}\n` +
            (plan.family === 'gcc' && plan.cppMode === 'full'
              ? '  (fully preprocessed; should the compile print anything, it is done again with -fdirectives-only for exact messages)\n'
              : ''),
        );
      }
    });

  program
    .command('coordinator')
    .description('run the coordinator in this terminal, logging to stderr (it normally starts by itself)')
    .option('--foreground', 'stay in the foreground (the default when run by hand)')
    .action(async () => {
      await runCoordinator('foreground');
    });

  program
    .command('demo')
    .description('start local workers and build a sample project through Ferry, checking every object')
    .option('-j, --jobs <n>', 'make -j', '8')
    .option('--workers <n>', 'how many workers to start', '2')
    .option('--no-ssh', 'reach the workers over their Unix sockets even when sshd is available')
    .action(async (options: { jobs: string; workers: string; ssh: boolean }) => {
      const { runDemo } = await import('./demo');
      process.exitCode = await runDemo({ jobs: Number(options.jobs), workers: Number(options.workers), ssh: options.ssh });
    });

  program
    .command('monitor')
    .description('watch a build live: each host with the jobs it compiles, and the progress (Ctrl-C to leave)')
    .option('--once', 'print one picture and exit')
    .action(async (options: { once?: boolean }) => {
      const { runMonitor } = await import('./monitor');
      process.exitCode = await runMonitor(options);
    });

  program
    .command('jobs')
    .description('print the make/ninja -j that keeps every configured slot busy: make -j$(ferry jobs)')
    .option('-v, --verbose', 'say how the number is made up, on stderr')
    .action(async (options: { verbose?: boolean }) => {
      const { suggestedJobs } = await import('./jobs');
      const control = Control.open();
      const status = await control?.status(0);
      control?.close();
      const { jobs, explanation } = suggestedJobs(process.env, status);
      if (options.verbose) process.stderr.write(`${explanation}\n`);
      process.stdout.write(`${jobs}\n`);
    });

  program
    .command('hosts')
    .description('the hosts jobs go to')
    .command('check')
    .description('check each host (ssh config, host key, login, worker, version, compilers) and say what to fix')
    .argument('[hosts...]', 'host names or FERRY_HOSTS entries (default: the configured hosts)')
    .option('--json', 'print the results as JSON')
    .action(async (hosts: string[], options: { json?: boolean }) => {
      const { runHostsCheck } = await import('./hosts-check');
      const write = (text: string) => process.stdout.write(text);
      process.exitCode = await runHostsCheck(hosts, { json: !!options.json, env: process.env, cwd: process.cwd(), write });
    });

  program
    .command('version')
    .description('print the version')
    .action(() => {
      process.stdout.write(`ferry ${FERRY_VERSION}\n`);
    });

  return program;
}

if (require.main === module) {
  buildProgram()
    .parseAsync(process.argv)
    .catch((err: unknown) => {
      process.stderr.write(`ferry: ${errorMessage(err)}\n`);
      process.exit(1);
    });
}
