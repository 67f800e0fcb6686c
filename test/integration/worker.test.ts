/**
 * The worker as a real process on a Unix socket, driven by a real gRPC client: compiles, refusals,
 * malformed streams, and nothing left behind in its temporary area.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { idleJobDirs, leftoverFiles } from '../support/job-files';
import { encodeChunk } from '../../proto/chunks';
import { loadWorkerProto } from '../../proto/load';
import type { WorkerClient } from '../../proto/generated/ferry/v1/Worker';
import type { JobHeader } from '../../proto/generated/ferry/v1/JobHeader';
import { RemoteFailure, WorkerJobs } from '../../coordinator/remote-compile';
import { compileOnce, rawJob } from '../support/jobs';
import { run, startProcess, WORKER_MAIN, type Started } from '../support/processes';

const gccVersion = execFileSync('gcc', ['--version'], { encoding: 'utf8' }).split('\n')[0];

let dir: string;
let jobsTmp: string;
let worker: Started;
let client: WorkerClient;

function header(overrides: Partial<JobHeader> = {}, size = 0): JobHeader {
  return {
    jobId: 'test',
    compiler: 'gcc',
    compilerVersion: gccVersion,
    args: ['-O2', '-c', '-fdirectives-only'],
    language: 'C',
    outputs: [{ kind: 'OBJECT', name: 'out.o' }],
    sourceSize: size,
    sourceName: 'x.c',
    ...overrides,
  };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-worker-test-'));
  jobsTmp = join(dir, 'tmp');
  execFileSync('mkdir', ['-p', jobsTmp]);
  worker = await startProcess(process.execPath, [WORKER_MAIN, '--listen', `unix:${join(dir, 'w.sock')}`, '--slots', '2', '--allow', 'gcc,g++', '--tmpdir', jobsTmp], /listening on/);
  const proto = loadWorkerProto();
  client = new proto.ferry.v1.Worker(`unix://${join(dir, 'w.sock')}`, grpc.credentials.createInsecure());
});

afterAll(async () => {
  client?.close();
  await worker?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('ferry-worker', () => {
  it.each(['0.0.0.0:3633', '10.1.1.1:3633', '[::]:3633'])('refuses to listen on %s and says to use SSH', async (address) => {
    const result = await run(process.execPath, [WORKER_MAIN, '--listen', address], { timeoutMs: 20_000 });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/refuses to listen on/);
    expect(result.stderr).toMatch(/SSH port forwarding/);
  });

  it('answers gRPC health checks', async () => {
    const { service } = await import('grpc-health-check');
    const Health = grpc.makeGenericClientConstructor(service, 'Health');
    const health = new Health(`unix://${join(dir, 'w.sock')}`, grpc.credentials.createInsecure()) as unknown as {
      check(req: { service: string }, cb: (err: Error | null, res: { status: string }) => void): void;
      close(): void;
    };
    for (const name of ['', 'ferry.v1.Worker']) {
      const reply = await new Promise<{ status: string }>((resolve, reject) => health.check({ service: name }, (err, res) => (err ? reject(err) : resolve(res))));
      expect(reply.status).toBe('SERVING');
    }
    health.close();
  });

  it('describes itself and its compilers', async () => {
    const description = await new Promise<any>((resolve, reject) => client.Describe({}, (err, reply) => (err ? reject(err) : resolve(reply))));
    expect(description.slots).toBe(2);
    expect(description.version).toMatch(/^\d+\.\d+\.\d+/);
    const gcc = description.compilers.find((c: { name: string }) => c.name === 'gcc');
    expect(gcc.version).toBe(gccVersion);
    expect(gcc.path).toMatch(/^\//);
    expect(gcc.target).toBe(execFileSync('gcc', ['-dumpmachine'], { encoding: 'utf8' }).trim());
    expect(description.compilers.map((c: { name: string }) => c.name).sort()).toEqual(['g++', 'gcc']);
  });

  it('compiles a preprocessed source into the same object as a local compile', async () => {
    const src = join(dir, 'hello.c');
    writeFileSync(src, '#include <stdio.h>\n#define GREETING "hello"\nint main(void) { puts(GREETING); return 0; }\n');
    execFileSync('gcc', ['-O2', '-c', src, '-o', join(dir, 'local.o')]);
    const source = execFileSync('gcc', ['-O2', '-E', '-fdirectives-only', src]);
    const outcome = await compileOnce(client, header({}, source.length), source, { deadlineMs: 20_000 });
    expect(outcome.result.exitCode).toBe(0);
    expect(outcome.outputs[0].equals(readFileSync(join(dir, 'local.o')))).toBe(true);
    expect(outcome.result.timings?.compileUs).toBeGreaterThan(0);
  });

  it('returns the compiler failure as a result, with its diagnostics and no object', async () => {
    const source = Buffer.from('# 1 "broken.c"\nint main(void) { return 0 }\n');
    const outcome = await compileOnce(client, header({}, source.length), source, { deadlineMs: 20_000 });
    expect(outcome.result.exitCode).toBe(1);
    expect(outcome.result.stderr.toString()).toMatch(/broken\.c:1:26: error: expected ';'/);
    expect(outcome.outputs[0].length).toBe(0);
  });

  it('runs cc1 and as without the driver once a shape is learnt: the driver\'s objects, messages and statuses', async () => {
    const args = ['-O1', '-Wall', '-c'];
    const shaped = (size: number) => header({ args, outputs: [{ kind: 'OBJECT', name: 'sub/steps.o' }] }, size);
    const ref = mkdtempSync(join(dir, 'steps-'));
    const local = (name: string, text: string) => {
      writeFileSync(join(ref, `${name}.i`), text);
      // The job sends no locale variables: the worker's compiler speaks C.
      const r = spawnSync('gcc', [...args, `${name}.i`, '-o', `${name}.o`], { cwd: ref, encoding: 'utf8', env: { PATH: process.env.PATH } });
      return { code: r.status, stderr: r.stderr, object: r.status === 0 ? readFileSync(join(ref, `${name}.o`)) : undefined };
    };
    const good = execFileSync('gcc', ['-O1', '-E', '-'], { input: 'static int twice(int x) { return 2 * x; }\nint f(int y) { return twice(y) + 1; }\n' }).toString();
    const warns = '# 1 "warns.c"\nint g(void) { int unused; return 0; }\n';
    const fails = '# 1 "fails.c"\nint h(void) { return missing; }\n';
    // ferry-worker-exec is built beside the worker: cc1 hands its assembly to as through a named pipe.
    const directJobs = () => worker.output().split('\n').filter((l) => /\(cc1 piped into as, without the driver(, forked)?\)$/.test(l)).length;

    // The first two jobs of the shape go through the driver; the second has its commands learnt.
    for (let i = 0; i < 2; i++) expect((await compileOnce(client, shaped(good.length), Buffer.from(good), { deadlineMs: 20_000 })).result.exitCode).toBe(0);
    for (let i = 0; i < 100 && !/compiles of "gcc -O1 -Wall -c" run cc1 and as without gcc's driver/.test(worker.output()); i++) await new Promise((r) => setTimeout(r, 100));
    expect(worker.output()).toMatch(/compiles of "gcc -O1 -Wall -c" run cc1 and as without gcc's driver/);
    const before = directJobs();

    for (const [name, text] of [['good', good], ['warns', warns], ['fails', fails]] as const) {
      const expected = local(name, text);
      const outcome = await compileOnce(client, shaped(text.length), Buffer.from(text), { deadlineMs: 20_000 });
      expect(outcome.result.exitCode, name).toBe(expected.code);
      expect(outcome.result.stderr.toString(), name).toBe(expected.stderr);
      if (expected.object) expect(outcome.outputs[0].equals(expected.object), name).toBe(true);
      else expect(outcome.outputs[0].length, name).toBe(0);
    }
    expect(local('warns', warns).stderr).toMatch(/warning: unused variable/);
    expect(local('fails', fails).code).toBe(1);
    expect(directJobs() - before).toBe(3);
  });

  /**
   * A job of the learnt shape (-O1 -Wall -c, the test above) compiling `source`: run through the
   * worker, it must give the object a local gcc gives.
   */
  function stepsJob(source: string) {
    const args = ['-O1', '-Wall', '-c'];
    const text = execFileSync('gcc', ['-O1', '-E', '-'], { input: source }).toString();
    const ref = mkdtempSync(join(dir, 'steps-'));
    writeFileSync(join(ref, 'steps.i'), text);
    execFileSync('gcc', [...args, 'steps.i', '-o', 'steps.o'], { cwd: ref, env: { PATH: process.env.PATH } });
    const expected = readFileSync(join(ref, 'steps.o'));
    return async () => {
      const outcome = await compileOnce(client, header({ args, outputs: [{ kind: 'OBJECT', name: 'sub/steps.o' }] }, text.length), Buffer.from(text), { deadlineMs: 20_000 });
      expect(outcome.result.exitCode).toBe(0);
      expect(outcome.outputs[0].equals(expected)).toBe(true);
    };
  }

  it('forks those steps from started copies of cc1 and as once their fork servers run: the same object', async () => {
    const job = stepsJob('int forked(int x) { return 3 * x; }\n');
    const forkedJobs = () => worker.output().split('\n').filter((l) => l.endsWith('(cc1 piped into as, without the driver, forked)')).length;
    const before = forkedJobs();
    // The servers start with the shape's first jobs without the driver (the test above); bounded.
    for (let i = 0; i < 40 && forkedJobs() === before; i++) {
      await job();
      if (forkedJobs() === before) await new Promise((r) => setTimeout(r, 50));
    }
    expect(forkedJobs()).toBeGreaterThan(before);
    expect(worker.output()).toMatch(/fork server for \S*cc1 \(pid \d+\)/);
    expect(worker.output()).toMatch(/fork server for \S*as \(pid \d+\)/);
    expect(worker.output()).not.toMatch(/could not take a job|no fork servers/);
  });

  it('compiles on when a fork server dies: the next jobs are exec\'d, then forked by a new server', async () => {
    const job = stepsJob('int after_kill(int x) { return 5 * x; }\n');
    // The worker's fork server of cc1: its child whose program is cc1 (the test above started it).
    const children = readFileSync(`/proc/${worker.child.pid}/task/${worker.child.pid}/children`, 'utf8').trim().split(' ').map(Number);
    const server = children.find((pid) => readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'cc1');
    expect(server).toBeDefined();
    process.kill(server!, 'SIGKILL');
    for (let i = 0; i < 100 && !/fork server for \S*cc1: killed by SIGKILL; its jobs are exec'd again/.test(worker.output()); i++) await new Promise((r) => setTimeout(r, 20));
    expect(worker.output()).toMatch(/fork server for \S*cc1: killed by SIGKILL; its jobs are exec'd again, next try in 1 s/);
    const forked = () => worker.output().split('\n').filter((l) => l.endsWith('without the driver, forked)')).length;
    await job();
    // A new server after the retry delay (1 s); bounded.
    const before = forked();
    for (let i = 0; i < 40 && forked() === before; i++) {
      await job();
      if (forked() === before) await new Promise((r) => setTimeout(r, 100));
    }
    expect(forked()).toBeGreaterThan(before);
  });

  it('refuses a compiler that is not on its allow list', async () => {
    const source = Buffer.from('int x;\n');
    const error = await compileOnce(client, header({ compiler: 'clang' }, source.length), source, { deadlineMs: 20_000 }).catch((e) => e);
    expect(error).toBeInstanceOf(RemoteFailure);
    expect(error.status).toBe(grpc.status.NOT_FOUND);
    expect(error.message).toMatch(/"clang" is not on this worker's allow list/);
    expect(error.hostFault).toBe(false);
  });

  it('refuses a job for another compiler version', async () => {
    const source = Buffer.from('int x;\n');
    const error = await compileOnce(client, header({ compilerVersion: 'gcc (Other) 1.0' }, source.length), source, { deadlineMs: 20_000 }).catch((e) => e);
    expect(error.status).toBe(grpc.status.FAILED_PRECONDITION);
    expect(error.message).toMatch(/the job expects "gcc \(Other\) 1.0"/);
  });

  it.each([['-fplugin=evil.so'], ['-specs=x'], ['-B/tmp'], ['-o/etc/passwd'], ['/etc/shadow'], ['@args.txt'], ['-save-temps']])(
    'refuses the argument %s',
    async (arg) => {
      const source = Buffer.from('int x;\n');
      const error = await compileOnce(client, header({ args: ['-c', arg] }, source.length), source, { deadlineMs: 20_000 }).catch((e) => e);
      expect(error.status).toBe(grpc.status.INVALID_ARGUMENT);
      expect(error.message).toContain(arg);
    },
  );

  it('rejects malformed jobs with clear statuses', async () => {
    const source = Buffer.from('int x;\n');
    const noHeader = await rawJob(client, [{ source: encodeChunk(source) }]);
    expect(noHeader.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(noHeader.details).toMatch(/first message of a job must be its header/);

    const truncated = await rawJob(client, [{ header: header({}, 1000) }, { source: encodeChunk(source) }]);
    expect(truncated.code).toBe(grpc.status.DATA_LOSS);
    expect(truncated.details).toMatch(/ended before the source was complete/);

    const wrongTotal = await rawJob(client, [{ header: header({}, source.length) }, { source: encodeChunk(source, false) }, { end: { totalSize: 3 } }]);
    expect(wrongTotal.code).toBe(grpc.status.DATA_LOSS);

    const badLz4 = await rawJob(client, [{ header: header({}, 64) }, { source: { compression: 'LZ4_BLOCK', data: Buffer.from([64, 0, 0, 0, 0xf0, 1, 2]) } }]);
    expect(badLz4.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(badLz4.details).toMatch(/LZ4/);

    const twoHeaders = await rawJob(client, [{ header: header({}, 7) }, { header: header({}, 7) }]);
    expect(twoHeaders.code).toBe(grpc.status.INVALID_ARGUMENT);

    const badOutput = await rawJob(client, [{ header: header({ outputs: [{ kind: 'OBJECT', name: '../escape.o' }] }, 7) }]);
    expect(badOutput.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(badOutput.details).toMatch(/must be a relative path inside the job directory/);
  });

  it('runs many jobs at once on one stream, each reply routed to its own job', async () => {
    const sources = Array.from({ length: 6 }, (_, i) =>
      execFileSync('gcc', ['-E', '-fdirectives-only', '-x', 'c', '-'], { input: `int value_${i}(void) { return ${i * 7}; }\n` }));
    const locals = sources.map((source, i) => {
      writeFileSync(join(dir, `many${i}.i`), source);
      execFileSync('gcc', ['-O2', '-c', '-fdirectives-only', '-fpreprocessed', join(dir, `many${i}.i`), '-o', join(dir, `many${i}.o`)]);
      return readFileSync(join(dir, `many${i}.o`));
    });
    const jobs = new WorkerJobs(client);
    try {
      // A broken job among them fails alone.
      const broken = Buffer.from('int x = ;\n');
      const [bad, ...good] = await Promise.all([
        jobs.compile(header({}, broken.length), broken, { deadlineMs: 20_000 }),
        ...sources.map((source) => jobs.compile(header({}, source.length), source, { deadlineMs: 20_000 })),
      ]);
      expect(bad.result.exitCode).toBe(1);
      good.forEach((outcome, i) => {
        expect(outcome.result.exitCode).toBe(0);
        expect(outcome.outputs[0].equals(locals[i])).toBe(true);
      });
      expect(jobs.inFlight).toBe(0);
    } finally {
      jobs.close();
    }
  });

  it('stops a cancelled job and goes on with the others of its stream', async () => {
    const slow = Array.from({ length: 3000 }, (_, i) => `int g${i}(int x) { int s = 0; for (int k = 0; k < x; k++) s += k * ${i} ^ (s >> 5); return s; }`).join('\n');
    const slowSource = execFileSync('gcc', ['-E', '-fdirectives-only', '-x', 'c', '-'], { input: slow });
    const quick = execFileSync('gcc', ['-E', '-fdirectives-only', '-x', 'c', '-'], { input: 'int quick(void) { return 1; }\n' });
    const jobs = new WorkerJobs(client);
    const aborter = new AbortController();
    try {
      const cancelled = jobs.compile(header({ args: ['-O3', '-c', '-fdirectives-only'] }, slowSource.length), slowSource, { deadlineMs: 60_000, signal: aborter.signal });
      const describe = () => new Promise<any>((resolve, reject) => client.Describe({}, (err, reply) => (err ? reject(err) : resolve(reply))));
      for (let i = 0; i < 200 && (await describe()).running === 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect((await describe()).running).toBe(1);
      aborter.abort();
      await expect(cancelled).rejects.toThrow(/job cancelled/);
      // The worker killed its compiler: the slot is free again, long before the compile could end.
      for (let i = 0; i < 200 && (await describe()).running > 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect((await describe()).running).toBe(0);
      const after = await jobs.compile(header({}, quick.length), quick, { deadlineMs: 20_000 });
      expect(after.result.exitCode).toBe(0);
    } finally {
      jobs.close();
    }
  });

  it('ends a stream whose message names no job, and ignores cancels of jobs it does not know', async () => {
    const source = Buffer.from('int x;\n');
    const noNumber = await rawJob(client, [{ job: 0, header: header({}, source.length) }]);
    expect(noNumber).toMatchObject({ from: 'stream', code: grpc.status.INVALID_ARGUMENT });
    expect(noNumber.details).toMatch(/without its job number/);

    const afterStrayCancel = await rawJob(client, [
      { job: 99, cancel: {} },
      { header: header({}, source.length) },
      { source: encodeChunk(source) },
      { end: { totalSize: source.length } },
    ], { keepOpen: true });
    expect(afterStrayCancel).toMatchObject({ from: 'job', code: grpc.status.OK });
  });

  it('ends a half-closed stream once its last job has replied', async () => {
    const source = execFileSync('gcc', ['-E', '-fdirectives-only', '-x', 'c', '-'], { input: 'int last(void) { return 2; }\n' });
    const call = client.Jobs();
    const replies: string[] = [];
    const status = new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve));
    call.on('data', (reply) => replies.push(reply.part));
    call.on('error', () => undefined);
    call.write({ job: 1, header: header({}, source.length) });
    call.write({ job: 1, source: encodeChunk(source) });
    call.write({ job: 1, end: { totalSize: source.length } });
    call.end();
    expect((await status).code).toBe(grpc.status.OK);
    expect(replies).toEqual(['output', 'result']);
  });

  it('streams its load to watchers: a job shows as running, then done', async () => {
    // Load changes are sent at most every 50 ms: the job must outlast that to be seen running.
    const updates: Array<{ running: number; jobsDone: number; slots: number }> = [];
    const call = client.Watch({});
    call.on('data', (load) => updates.push(load));
    call.on('error', () => undefined);
    await new Promise((r) => setTimeout(r, 100));
    const before = updates[updates.length - 1];
    expect(before.slots).toBe(2);
    const slow = Array.from({ length: 1500 }, (_, i) => `int f${i}(int x) { int s = 0; for (int k = 0; k < x; k++) s += k * ${i} ^ (s >> 3); return s; }`).join('\n');
    const source = execFileSync('gcc', ['-O2', '-E', '-fdirectives-only', '-x', 'c', '-'], { input: `#include <stdio.h>\n${slow}\nint main(void){return puts("x");}\n` });
    const started = Date.now();
    const outcome = await compileOnce(client, header({}, source.length), source, { deadlineMs: 60_000 });
    expect(outcome.result.exitCode).toBe(0);
    expect(Date.now() - started).toBeGreaterThan(150);
    await new Promise((r) => setTimeout(r, 150));
    call.cancel();
    expect(updates.some((u) => u.running === 1)).toBe(true);
    const last = updates[updates.length - 1];
    expect(last.running).toBe(0);
    expect(last.jobsDone).toBe(before.jobsDone + 1);
  });

  it('keeps serving after bad requests and leaves nothing of its jobs behind', async () => {
    const source = execFileSync('gcc', ['-E', '-fdirectives-only', '-x', 'c', '-'], { input: 'int answer = 42;\n' });
    const outcome = await compileOnce(client, header({}, source.length), source, { deadlineMs: 20_000 });
    expect(outcome.result.exitCode).toBe(0);
    const roots = readdirSync(jobsTmp);
    expect(roots).toHaveLength(1);
    expect(roots[0]).toMatch(/^ferry-worker-/);
    // Job directories are emptied right after each reply and kept for the next job (at most one
    // per slot); allow the last a moment.
    for (let i = 0; i < 50 && leftoverFiles(jobsTmp).length > 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(leftoverFiles(jobsTmp)).toEqual([]);
    expect(idleJobDirs(jobsTmp).length).toBeGreaterThan(0);
    expect(idleJobDirs(jobsTmp).length).toBeLessThanOrEqual(2);
    const description = await new Promise<any>((resolve, reject) => client.Describe({}, (err, reply) => (err ? reject(err) : resolve(reply))));
    expect(description.jobsDone).toBeGreaterThanOrEqual(3);
  });
});

describe('ferry-worker without a tmpdir set', () => {
  it('makes its job directories on /dev/shm, in a directory of its own that its stop removes', async () => {
    const own = mkdtempSync(join(tmpdir(), 'ferry-worker-shm-'));
    const socket = join(own, 'w.sock');
    const started = await startProcess(process.execPath, [WORKER_MAIN, '--listen', `unix:${socket}`, '--slots', '1', '--allow', 'gcc'], /listening on/);
    const shmDir = `/dev/shm/ferry-${process.getuid!()}-worker-${started.child.pid}`;
    const proto = loadWorkerProto();
    const shmClient: WorkerClient = new proto.ferry.v1.Worker(`unix://${socket}`, grpc.credentials.createInsecure());
    try {
      const source = Buffer.from('int on_shm(void) { return 4; }\n');
      expect((await compileOnce(shmClient, header({}, source.length), source, { deadlineMs: 20_000 })).result.exitCode).toBe(0);
      // The job's directory, emptied and kept for the next job, is there.
      expect(readdirSync(shmDir).filter((d) => d.startsWith('job-'))).toHaveLength(1);
    } finally {
      shmClient.close();
      await started.stop();
      rmSync(own, { recursive: true, force: true });
    }
    expect(readdirSync('/dev/shm')).not.toContain(shmDir.slice('/dev/shm/'.length));
  });
});
