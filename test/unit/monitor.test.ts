import { describe, expect, it } from 'vitest';
import { renderMonitor, renderMonitorLine } from '../../cli/monitor';
import { suggestedJobs } from '../../cli/jobs';
import { formatStatus } from '../../cli/report';
import type { CoordinatorStatus__Output } from '../../proto/generated/ferry/coordinator/v1/CoordinatorStatus';

const host = (over: Partial<CoordinatorStatus__Output['hostStatus'][number]>) => ({
  name: 'r1',
  state: 'up',
  lastError: '',
  slots: 4,
  inUse: 0,
  jobsDone: 0,
  failures: 0,
  workerVersion: '0.1.0',
  compilers: [],
  compilerMismatches: [],
  running: [],
  workerRunning: 0,
  workerQueued: 0,
  ...over,
});

const status = (over: Partial<CoordinatorStatus__Output> = {}): CoordinatorStatus__Output => ({
  version: '0.1.0',
  pid: 1,
  started: '2026-11-25T00:00:00Z',
  hosts: 'r1/4 r2/4',
  hostStatus: [
    host({ inUse: 2, jobsDone: 10, running: [{ source: 'src/a.c', millis: 1500 }, { source: 'src/b.c', millis: 300 }], workerRunning: 3 }),
    host({ name: 'r2', state: 'down', lastError: 'SSH connection to r2 closed', failures: 1 }),
  ],
  runningJobs: 2,
  queuedJobs: 5,
  recent: [],
  jobsDone: 42,
  localSlots: 2,
  localRunning: 1,
  notes: ['DISTCC_HOSTS --randomize ignored'],
  ...over,
});

describe('ferry monitor picture', () => {
  it('shows the build, each host with its jobs longest first, and why a host is down', () => {
    const lines = renderMonitor(status(), { width: 100, rate: 3.25 });
    expect(lines[0]).toBe('ferry 0.1.0  done 42  compiling 3  waiting 5  3.3 jobs/s');
    const r1 = lines.findIndex((l) => l.startsWith('r1 '));
    expect(lines[r1]).toMatch(/up\s+\[########\.{8}\] 2\/4  \(\+1 from other initiators\)  done 10/);
    expect(lines[r1 + 1]).toMatch(/^\s+1\.5 s  src\/a\.c$/);
    expect(lines[r1 + 2]).toMatch(/^\s+0\.3 s  src\/b\.c$/);
    const r2 = lines.findIndex((l) => l.startsWith('r2 '));
    expect(lines[r2]).toMatch(/down .* failed 1/);
    expect(lines[r2 + 1]).toBe('    SSH connection to r2 closed');
    expect(lines.at(-1)).toMatch(/^localhost\s+local\s+\[########\.{8}\] 1\/2$/);
  });

  it('never writes past the terminal width', () => {
    const long = status({ hostStatus: [host({ running: [{ source: `src/${'x'.repeat(300)}.c`, millis: 1 }] })] });
    for (const line of renderMonitor(long, { width: 60, rate: 0 })) expect(line.length).toBeLessThanOrEqual(60);
  });

  it('has a one-line form for logs', () => {
    expect(renderMonitorLine(status(), { width: 80, rate: 1 })).toMatch(/done 42 waiting 5 1\.0 jobs\/s \| r1 up 2\/4, r2 down 0\/4$/);
  });

  it('renders status with notes, other initiators, running jobs and local slots', () => {
    const text = formatStatus(status());
    expect(text).toMatch(/note: DISTCC_HOSTS --randomize ignored/);
    expect(text).toMatch(/r1 +up +slots 2\/4 \(\+1 of other initiators\)/);
    expect(text).toMatch(/compiling src\/a\.c \(1\.5 s\)/);
    expect(text).toMatch(/last error: SSH connection to r2 closed/);
    expect(text).toMatch(/localhost +local +slots 1\/2/);
  });
});

describe('ferry jobs', () => {
  it('adds the hosts slots, local slots and a job per core', () => {
    expect(suggestedJobs({ FERRY_HOSTS: 'a/16 b/8 localhost/2' }, undefined, 2).jobs).toBe(28);
  });

  it('uses the slots workers advertised for hosts without /N, and says when it does not know', () => {
    const known = suggestedJobs({ FERRY_HOSTS: 'r1 r2/4' }, status(), 2);
    expect(known.jobs).toBe(4 + 4 + 2);
    const unknown = suggestedJobs({ FERRY_HOSTS: 'x y/4' }, undefined, 2);
    expect(unknown.jobs).toBe(6);
    expect(unknown.explanation).toMatch(/x: slots unknown until a compile reaches it/);
  });

  it('reads DISTCC_HOSTS too', () => {
    expect(suggestedJobs({ HOME: '/nonexistent', DISTCC_HOSTS: '@a/8 localhost/1' }, undefined, 2).jobs).toBe(11);
  });
});
