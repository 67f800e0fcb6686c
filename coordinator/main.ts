/**
 * The coordinator process. The launcher starts it with --daemon (stdout/stderr already go to the
 * log, fd 3 is the readiness pipe); `ferry coordinator --foreground` runs the same in a terminal.
 */
import { errorMessage, FerryError } from '../proto/errors';
import { signalReady, startCoordinator } from './server';

const DEFAULT_IDLE_TIMEOUT_S = 900;

export async function runCoordinator(mode: 'daemon' | 'foreground'): Promise<void> {
  const idleSeconds = Number(process.env.FERRY_IDLE_TIMEOUT ?? DEFAULT_IDLE_TIMEOUT_S);
  let coordinator;
  try {
    coordinator = await startCoordinator({ idleTimeoutMs: mode === 'daemon' && idleSeconds > 0 ? idleSeconds * 1000 : 0 });
  } catch (err) {
    // Two launchers raced and the other one's coordinator is serving: the job can go ahead.
    if (mode === 'daemon' && err instanceof FerryError && err.code === 'already-running') {
      signalReady();
      return;
    }
    throw err;
  }
  if (mode === 'daemon') signalReady();
  const stop = () => void coordinator.stop();
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  await coordinator.stopped;
}

if (require.main === module) {
  const mode = process.argv.includes('--foreground') ? 'foreground' : 'daemon';
  runCoordinator(mode).then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`ferry coordinator: ${errorMessage(err)}\n`);
      process.exit(1);
    },
  );
}
