/**
 * The worker locked down for a shared machine, as real processes: worker.conf, the socket's group
 * (with a throwaway local user), the argument policy end to end, each limit, malformed streams.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { idleJobDirs, leftoverFiles } from '../support/job-files';
import { encodeChunk } from '../../proto/chunks';
import { loadWorkerProto } from '../../proto/load';
import type { WorkerClient } from '../../proto/generated/ferry/v1/Worker';
import type { JobHeader } from '../../proto/generated/ferry/v1/JobHeader';
import type { CompileRequest } from '../../proto/generated/ferry/v1/CompileRequest';
import type { WorkerDescription__Output } from '../../proto/generated/ferry/v1/WorkerDescription';
import { RemoteFailure } from '../../coordinator/remote-compile';
import { compileOnce, rawJob } from '../support/jobs';
import { ROOT, run, startProcess, WORKER_MAIN, type Started } from '../support/processes';

const gccVersion = execFileSync('gcc', ['--version'], { encoding: 'utf8' }).split('\n')[0];
const gxxVersion = execFileSync('g++', ['--version'], { encoding: 'utf8' }).split('\n')[0];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A constexpr loop gcc needs minutes for: the job-timeout and per-connection tests kill it. */
const SLOW_CXX = execFileSync('g++', ['-E', '-std=c++17', '-x', 'c++', '-'], {
  input:
    'constexpr unsigned long spin() { unsigned long s = 0;\n' +
    '  for (unsigned long i = 0; i < 200000; ++i) for (unsigned long j = 0; j < 200000; ++j) s += i ^ j;\n' +
    '  return s; }\n' +
    'constexpr unsigned long value = spin();\nunsigned long get() { return value; }\n',
});
const SLOW_ARGS = ['-std=c++17', '-fconstexpr-ops-limit=100000000000', '-c'];

let base: string;

interface TestWorker {
  process: Started;
  client: WorkerClient;
  socket: string;
  /** The worker's tmpdir (its ferry-worker-* root is inside). */
  tmp: string;
}
const started: TestWorker[] = [];

function newClient(socket: string, separateConnection = false): WorkerClient {
  const proto = loadWorkerProto();
  // grpc-js shares one connection among clients of the same target unless told otherwise.
  return new proto.ferry.v1.Worker(`unix://${socket}`, grpc.credentials.createInsecure(), separateConnection ? { 'grpc.use_local_subchannel_pool': 1 } : {});
}

/** Starts a worker on a Unix socket; `config` lines are added to (or replace keys of) a base worker.conf. */
async function startWorker(name: string, config = '', args: string[] = []): Promise<TestWorker> {
  const dir = join(base, name);
  const tmp = join(dir, 'tmp');
  mkdirSync(tmp, { recursive: true });
  const socket = join(dir, 'w.sock');
  const file = join(dir, 'worker.conf');
  const settings = new Map([['listen', `unix:${socket}`], ['tmpdir', tmp], ['allow', 'gcc,g++'], ['slots', '2']]);
  for (const line of config.split('\n').filter(Boolean)) {
    const [key, value] = line.split('=').map((s) => s.trim());
    settings.set(key, value);
  }
  writeFileSync(file, `# test worker\n${[...settings].map(([k, v]) => `${k} = ${v}`).join('\n')}\n`);
  const process_ = await startProcess(process.execPath, [WORKER_MAIN, '--config', file, ...args], /listening on/);
  const worker = { process: process_, client: newClient(socket), socket, tmp };
  started.push(worker);
  return worker;
}

async function stopWorker(worker: TestWorker): Promise<void> {
  worker.client.close();
  await worker.process.stop();
}

function describeWorker(client: WorkerClient): Promise<WorkerDescription__Output> {
  return new Promise((resolve, reject) =>
    client.Describe({}, { deadline: Date.now() + 10_000 }, (err, reply) => (err || !reply ? reject(err) : resolve(reply))),
  );
}

/** Job directories left in a worker's temp area. */
/**
 * Waits (bounded) until nothing of any job is left in the temp area (cleaning follows each reply by
 * a moment); emptied job directories may wait for the next job, one per slot at most.
 */
async function expectNoJobDirs(worker: TestWorker): Promise<void> {
  for (let i = 0; i < 100 && leftoverFiles(worker.tmp).length > 0; i++) await sleep(50);
  expect(leftoverFiles(worker.tmp)).toEqual([]);
  expect(idleJobDirs(worker.tmp).length).toBeLessThanOrEqual(4);
}

async function waitFor(what: string, test: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await test()) return;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

function header(overrides: Partial<JobHeader> = {}, size = 0): JobHeader {
  return {
    jobId: 'lockdown',
    compiler: 'gcc',
    compilerVersion: gccVersion,
    args: ['-O2', '-c'],
    language: 'C',
    outputs: [{ kind: 'OBJECT', name: 'out.o' }],
    sourceSize: size,
    sourceName: 'x.c',
    ...overrides,
  };
}

async function compileError(client: WorkerClient, h: JobHeader, source: Buffer): Promise<RemoteFailure> {
  const error = await compileOnce(client, h, source, { deadlineMs: 30_000 }).then(
    (outcome) => new Error(`expected a refusal, got exit ${outcome.result.exitCode}`),
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(RemoteFailure);
  return error as RemoteFailure;
}

beforeAll(() => {
  base = mkdtempSync(join(tmpdir(), 'ferry-lockdown-'));
});

afterAll(async () => {
  for (const worker of started) await stopWorker(worker);
  rmSync(base, { recursive: true, force: true });
});

describe('worker.conf', () => {
  it('takes its settings from --config, and command-line options over them', async () => {
    const worker = await startWorker('config', 'slots = 3\nmax_jobs_per_connection = 1', ['--slots', '4']);
    expect(worker.process.output()).toMatch(/listening on unix:.*w\.sock \(4 slots; compilers: (gcc, g\+\+|g\+\+, gcc); config: .*worker\.conf\)/);
    expect((await describeWorker(worker.client)).slots).toBe(4);
    expect(statSync(worker.socket).mode & 0o777).toBe(0o660);
    await stopWorker(worker);
  });

  it.each([
    ['unknown key', 'max_sorce_mb = 3', /worker\.conf:7: unknown key "max_sorce_mb"\n {2}-> Did you mean "max_source_mb"\?/],
    ['bad value', 'job_timeout = soon', /worker\.conf:7: job_timeout must be a whole number of at least 1, not "soon"\n {2}-> Write it as "job_timeout = 1800"\./],
    ['non-loopback listen', 'listen = 0.0.0.0:3633', /worker\.conf:7: ferry-worker refuses to listen on 0\.0\.0\.0:3633.*\n {2}-> .*SSH port forwarding/],
    ['missing socket group', 'socket_group = ferry-no-such-group', /socket group "ferry-no-such-group" does not exist on this machine\n {2}-> Create it \(sudo groupadd --system ferry-no-such-group\)/],
  ])('refuses to start with a %s, naming the file, line and fix', async (name, line, expected) => {
    const dir = join(base, `bad-${name.replace(/\W/g, '-')}`);
    mkdirSync(dir);
    const file = join(dir, 'worker.conf');
    const listen = line.startsWith('listen') ? '' : `listen = unix:${join(dir, 'w.sock')}`;
    writeFileSync(file, `# a worker.conf\n\n${listen}\nallow = gcc\n\n# the line under test:\n${line}\n`);
    const result = await run(process.execPath, [WORKER_MAIN, '--config', file], { timeoutMs: 20_000 });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(expected);
    // Nothing is left listening or lying around.
    expect(existsSync(join(dir, 'w.sock'))).toBe(false);
  });

  it('refuses a --config file that does not exist', async () => {
    const result = await run(process.execPath, [WORKER_MAIN, '--config', join(base, 'nowhere.conf')], { timeoutMs: 20_000 });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/config file .*nowhere\.conf does not exist/);
  });
});

describe.skipIf(process.getuid?.() !== 0)('the socket and its group', () => {
  const suffix = randomBytes(3).toString('hex');
  const user = `ferry-test-${suffix}`;
  const group = `ferry-tg-${suffix}`;
  let created = { user: false, group: false };
  let worker: TestWorker;
  let clientScript: string;

  /** Runs the tiny client as the throwaway user: a raw connect, then a gRPC Describe. */
  async function asUser(): Promise<string> {
    const result = await run('runuser', ['-u', user, '--', process.execPath, clientScript, worker.socket], { timeoutMs: 30_000 });
    return result.stdout + result.stderr;
  }

  beforeAll(async () => {
    execFileSync('groupadd', ['--system', group]);
    created.group = true;
    execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', user]);
    created.user = true;
    const dir = join(base, 'group');
    mkdirSync(dir);
    chmodSync(base, 0o755); // mkdtemp made it 0700; the user must reach the socket inside
    chmodSync(dir, 0o755);
    clientScript = join(dir, 'client.js');
    writeFileSync(
      clientScript,
      `const net = require('net');
const grpc = require(${JSON.stringify(join(ROOT, 'node_modules', '@grpc', 'grpc-js'))});
const { loadWorkerProto } = require(${JSON.stringify(join(ROOT, 'dist', 'proto', 'load.js'))});
const socket = process.argv[2];
const s = net.connect(socket);
s.on('connect', () => { console.log('connect: ok'); s.destroy(); describe(); });
s.on('error', (e) => { console.log('connect: ' + e.code); describe(); });
function describe() {
  const client = new (loadWorkerProto().ferry.v1.Worker)('unix://' + socket, grpc.credentials.createInsecure());
  client.Describe({}, { deadline: Date.now() + 5000 }, (err, reply) => {
    console.log(err ? 'describe: ' + err.code + ' ' + err.details : 'describe: ok, ' + reply.slots + ' slots');
    client.close();
  });
}
`,
    );
    chmodSync(clientScript, 0o644);
    worker = await startWorker('group', `socket_group = ${group}`);
  });

  afterAll(() => {
    if (created.user) execFileSync('userdel', [user]);
    if (created.group) execFileSync('groupdel', [group]);
  });

  it('is mode 0660 and belongs to socket_group', () => {
    const info = statSync(worker.socket);
    expect(info.mode & 0o777).toBe(0o660);
    const gid = Number(execFileSync('getent', ['group', group], { encoding: 'utf8' }).split(':')[2]);
    expect(info.gid).toBe(gid);
  });

  it('keeps out a local user who is not in the group, and lets them in once they are', async () => {
    const outsider = await asUser();
    expect(outsider).toMatch(/connect: EACCES/);
    expect(outsider).toMatch(/describe: 14 .*(EACCES|permission denied)/i);
    execFileSync('usermod', ['-aG', group, user]);
    const member = await asUser();
    expect(member).toMatch(/connect: ok/);
    expect(member).toMatch(/describe: ok, 2 slots/);
  });
});

describe('argument policy, end to end', () => {
  let worker: TestWorker;
  let sysrootWorker: TestWorker;
  const source = Buffer.from('# 1 "x.c"\nint x = 1;\n');

  beforeAll(async () => {
    worker = await startWorker('policy');
    sysrootWorker = await startWorker('policy-sysroot', 'allowed_sysroots = /');
  });

  it.each([
    [['-c', '-fplugin=/tmp/evil.so'], /argument "-fplugin=\/tmp\/evil.so" is refused: it loads a compiler plugin/],
    [['-c', '-wrapper', '/bin/sh,-c,id'], /argument "-wrapper" is refused: it runs the compiler under another program/],
    [['-c', '-MD'], /argument "-MD" is refused: it writes a dependency file/],
    [['-c', '-Wa,-alh=/tmp/listing'], /assembler write a listing/],
    [['-c', '-fdump-tree-all'], /writes compiler dumps/],
    [['-O2', '-Wl,-plugin=/tmp/p.so'], /refused: it passes options to the linker/],
    [['-O2'], /the job has neither -c nor -S/],
    [['-c', '--sysroot=/'], /argument "--sysroot=\/" is refused: .*none is allowed here; allowed_sysroots/],
  ])('refuses %j with INVALID_ARGUMENT and says why', async (args, why) => {
    const error = await compileError(worker.client, header({ args }, source.length), source);
    expect(error.status).toBe(grpc.status.INVALID_ARGUMENT);
    expect(error.message).toMatch(why);
  });

  it('accepts a sysroot that allowed_sysroots lists', async () => {
    const outcome = await compileOnce(sysrootWorker.client, header({ args: ['-c', '--sysroot=/'] }, source.length), source, { deadlineMs: 30_000 });
    expect(outcome.result.exitCode).toBe(0);
    expect(outcome.outputs[0].length).toBeGreaterThan(0);
    const other = await compileError(sysrootWorker.client, header({ args: ['-c', '--sysroot', '/opt'] }, source.length), source);
    expect(other.message).toMatch(/allowed here: \//);
  });

  it('left no job directories behind', async () => {
    await expectNoJobDirs(worker);
    await expectNoJobDirs(sysrootWorker);
  });
});

describe('limits', () => {
  it('refuses a source over max_source_mb with RESOURCE_EXHAUSTED naming the key', async () => {
    const worker = await startWorker('max-source', 'max_source_mb = 1');
    const source = Buffer.alloc(2 << 20, '/* padding */\n');
    const error = await compileError(worker.client, header({}, source.length), source);
    expect(error.status).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(error.message).toMatch(/source of 2097152 bytes is over this worker's limit of 1 MiB \(max_source_mb\)/);
    expect(error.message).toMatch(/Raise max_source_mb in the worker's worker.conf/);
    await expectNoJobDirs(worker);
  });

  it('refuses a source whose chunks pass max_compressed_source_mb', async () => {
    const worker = await startWorker('max-compressed', 'max_source_mb = 16\nmax_compressed_source_mb = 1');
    // Random bytes do not compress: 3 MiB go on the wire as 3 MiB.
    const noise = randomBytes(3 << 20);
    const chunks = [0, 1, 2].map((i) => ({ source: encodeChunk(noise.subarray(i << 20, (i + 1) << 20)) }));
    const status = await rawJob(worker.client, [{ header: header({}, noise.length) }, ...chunks, { end: { totalSize: noise.length } }]);
    expect(status.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(status.details).toMatch(/source as sent passed this worker's limit of 1 MiB \(max_compressed_source_mb\)/);
    // A compressible source of the same size is within the limit.
    const text = execFileSync('gcc', ['-E', '-x', 'c', '-'], { maxBuffer: 64 << 20, input: Array.from({ length: 60_000 }, (_, i) => `int v${i} = ${i};`).join('\n') });
    expect(text.length).toBeGreaterThan(1 << 20);
    const outcome = await compileOnce(worker.client, header({}, text.length), text, { deadlineMs: 60_000 });
    expect(outcome.result.exitCode).toBe(0);
    await expectNoJobDirs(worker);
  });

  it('refuses an object over max_object_mb', async () => {
    const worker = await startWorker('max-object', 'max_object_mb = 1');
    const source = Buffer.from('# 1 "big.c"\nchar big[3 << 20] = { 1 };\n');
    const error = await compileError(worker.client, header({}, source.length), source);
    expect(error.status).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(error.message).toMatch(/output out\.o is \d+ bytes, over this worker's limit of 1 MiB \(max_object_mb\)/);
    await expectNoJobDirs(worker);
  });

  it('kills a compile that runs past job_timeout, with its children, and removes its directory', async () => {
    const worker = await startWorker('timeout', 'job_timeout = 1', ['--allow', 'g++']);
    const before = Date.now();
    const error = await compileError(worker.client, header({ compiler: 'g++', compilerVersion: gxxVersion, language: 'CXX', args: SLOW_ARGS }, SLOW_CXX.length), SLOW_CXX);
    const took = Date.now() - before;
    expect(error.status).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(error.message).toMatch(/compiler ran longer than 1 s and was killed \(job_timeout\)/);
    expect(took).toBeLessThan(10_000);
    await expectNoJobDirs(worker);
    // cc1plus (a child of the g++ driver) is gone too: nothing runs on a file in the temp area.
    const left = await run('pgrep', ['-f', worker.tmp]);
    expect(left.stdout).toBe('');
  });

  it('ends a job whose source stops arriving after job_timeout', async () => {
    const worker = await startWorker('stall', 'job_timeout = 1');
    const before = Date.now();
    const status = await rawJob(worker.client, [{ header: header({}, 100) }], { keepOpen: true });
    expect(status.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(status.details).toMatch(/the job's source did not arrive within 1 s \(job_timeout\)/);
    expect(Date.now() - before).toBeLessThan(10_000);
  });

  it('ends a stream whose waiting jobs hold more than max_compressed_source_mb', async () => {
    const worker = await startWorker('held', 'slots = 2\nmax_jobs_per_connection = 1\nmax_compressed_source_mb = 1\njob_timeout = 120', ['--allow', 'g++']);
    const slow = header({ compiler: 'g++', compilerVersion: gxxVersion, language: 'CXX', args: SLOW_ARGS }, SLOW_CXX.length);
    // Job 2 waits for job 1's turn, so its source is held: two chunks of noise, 1.4 MiB together.
    const noise = randomBytes(1400 << 10);
    const status = await rawJob(worker.client, [
      { header: slow }, { source: encodeChunk(SLOW_CXX) }, { end: { totalSize: SLOW_CXX.length } },
      { job: 2, header: header({}, noise.length) },
      { job: 2, source: encodeChunk(noise.subarray(0, 700 << 10)) },
      { job: 2, source: encodeChunk(noise.subarray(700 << 10)) },
    ], { keepOpen: true });
    expect(status).toMatchObject({ from: 'stream', code: grpc.status.RESOURCE_EXHAUSTED });
    expect(status.details).toMatch(/jobs waiting for their turn hold more than 1048576 bytes/);
    // Both jobs stopped with their stream: the slow compile is not left running.
    await waitFor('the worker to be idle', async () => (await describeWorker(worker.client)).running === 0);
    await expectNoJobDirs(worker);
  });

  it('makes jobs over max_jobs_per_connection wait for their own connection, not others', async () => {
    const worker = await startWorker('per-connection', 'slots = 2\nmax_jobs_per_connection = 1\njob_timeout = 120', ['--allow', 'g++']);
    const first = newClient(worker.socket, true);
    const second = newClient(worker.socket, true);
    // Each connection's jobs go over one Jobs stream, as a coordinator sends them.
    const streamOf = (client: WorkerClient) => {
      const call = client.Jobs();
      const replies: number[] = [];
      call.on('data', (reply) => replies.push(reply.job));
      call.on('error', () => undefined);
      let next = 1;
      const start = () => {
        const job = next++;
        call.write({ job, header: header({ compiler: 'g++', compilerVersion: gxxVersion, language: 'CXX', args: SLOW_ARGS }, SLOW_CXX.length) });
        call.write({ job, source: encodeChunk(SLOW_CXX) });
        call.write({ job, end: { totalSize: SLOW_CXX.length } });
        return { cancel: () => call.write({ job, cancel: {} }) };
      };
      return { start, replies, close: () => call.cancel() };
    };
    const firstJobs = streamOf(first);
    const secondJobs = streamOf(second);
    const slowJob = (client: WorkerClient) => (client === first ? firstJobs : secondJobs).start();
    const running = async (n: number) => (await describeWorker(worker.client)).running === n;
    try {
      const a1 = slowJob(first);
      const a2 = slowJob(first);
      await waitFor('one job of the first connection to run', () => running(1));
      // Two free slots, but the first connection's second job waits for its first; it is not even queued.
      await sleep(1000);
      let load = await describeWorker(worker.client);
      expect(load).toMatchObject({ running: 1, queued: 0 });
      // Another connection gets the free slot at once.
      const b1 = slowJob(second);
      await waitFor('the second connection to run its job', () => running(2));
      // When the first connection's job ends, its waiting job starts.
      a1.cancel();
      await waitFor('the waiting job to start', async () => (await describeWorker(worker.client)).jobsDone >= 1);
      await waitFor('two jobs to run again', () => running(2));
      load = await describeWorker(worker.client);
      expect(load).toMatchObject({ running: 2, queued: 0 });
      a2.cancel();
      b1.cancel();
      await waitFor('the worker to be idle', () => running(0));
      // A cancelled job gets no reply.
      expect([...firstJobs.replies, ...secondJobs.replies]).toEqual([]);
      await expectNoJobDirs(worker);
    } finally {
      firstJobs.close();
      secondJobs.close();
      first.close();
      second.close();
    }
  });
});

describe('malformed input', () => {
  let worker: TestWorker;
  const source = Buffer.from('# 1 "x.c"\nint x = 1;\n');

  beforeAll(async () => {
    worker = await startWorker('malformed');
  });

  it.each<[string, CompileRequest[], grpc.status, RegExp]>([
    ['a stream with no header', [{ source: encodeChunk(source) }], grpc.status.INVALID_ARGUMENT, /first message of a job must be its header/],
    ['a truncated stream', [{ header: header({}, 1000) }, { source: encodeChunk(source, false) }], grpc.status.DATA_LOSS, /ended before the source was complete/],
    ['an end with the wrong size', [{ header: header({}, source.length) }, { source: encodeChunk(source, false) }, { end: { totalSize: 1 } }], grpc.status.DATA_LOSS, /header said \d+, end said 1/],
    ['a wrong LZ4 frame', [{ header: header({}, 64) }, { source: { compression: 'LZ4_BLOCK', data: Buffer.from([64, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]) } }], grpc.status.INVALID_ARGUMENT, /LZ4 chunk does not decompress/],
    ['an LZ4 frame larger than declared', [{ header: header({}, 8) }, { source: encodeChunk(Buffer.alloc(4096, 'a')) }], grpc.status.INVALID_ARGUMENT, /LZ4 chunk declares 4096 bytes, over the limit of 8/],
    ['an unknown compression', [{ header: header({}, 8) }, { source: { compression: 9 as unknown as 'NONE', data: Buffer.alloc(8) } }], grpc.status.INVALID_ARGUMENT, /unknown chunk compression 9/],
    ['an unknown compiler', [{ header: header({ compiler: 'tcc' }, 8) }], grpc.status.NOT_FOUND, /compiler "tcc" is not on this worker's allow list\n {2}-> Allowed here: /],
    ['a compiler path', [{ header: header({ compiler: '/usr/bin/gcc' }, 8) }], grpc.status.NOT_FOUND, /compiler "\/usr\/bin\/gcc" is not on this worker's allow list/],
    ['an unknown language', [{ header: header({ language: 7 as unknown as 'C' }, 8) }], grpc.status.INVALID_ARGUMENT, /job header has no language/],
    ['an escaping working directory', [{ header: header({ cwd: '/../../etc' }, 8) }], grpc.status.INVALID_ARGUMENT, /working directory "\/..\/..\/etc" must be an absolute path without/],
    ['an escaping source path', [{ header: header({ cwd: '/src', sourcePath: '../../../../x.c' }, source.length) }, { source: encodeChunk(source) }, { end: { totalSize: source.length } }], grpc.status.INVALID_ARGUMENT, /source path "..\/..\/..\/..\/x.c" leaves the job directory/],
    ['too many outputs', [{ header: header({ outputs: Array.from({ length: 40 }, (_, i) => ({ kind: 'OBJECT' as const, name: `o${i}.o` })) }, 8) }], grpc.status.INVALID_ARGUMENT, /names 40 outputs, more than 16/],
    ['a NUL in the environment', [{ header: header({ env: { LANG: 'C\0x' } }, 8) }], grpc.status.INVALID_ARGUMENT, /environment variable "LANG" contains a NUL byte/],
  ])('ends %s with a clear status', async (_name, messages, code, details) => {
    const status = await rawJob(worker.client, messages);
    // The job fails; its stream goes on.
    expect(status.from).toBe('job');
    expect(status.code).toBe(code);
    expect(status.details).toMatch(details);
  });

  it('answers bytes that are not a request message with a status', async () => {
    const raw = new grpc.Client(`unix://${worker.socket}`, grpc.credentials.createInsecure());
    try {
      const status = await new Promise<grpc.StatusObject>((resolve) => {
        const call = raw.makeBidiStreamRequest('/ferry.v1.Worker/Jobs', (b: Buffer) => b, (b: Buffer) => b, new grpc.Metadata(), { deadline: Date.now() + 20_000 });
        call.on('status', resolve);
        call.on('data', () => undefined);
        call.on('error', () => undefined);
        call.write(Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]));
        call.end();
      });
      expect(status.code).not.toBe(grpc.status.OK);
      expect(status.details).toMatch(/pars|deserializ|invalid|index out of range/i);
    } finally {
      raw.close();
    }
  });

  it('keeps serving, and leaves nothing in its temp area', async () => {
    expect(worker.process.child.exitCode).toBeNull();
    const text = execFileSync('gcc', ['-E', '-x', 'c', '-'], { input: 'int answer = 42;\n' });
    const outcome = await compileOnce(worker.client, header({}, text.length), text, { deadlineMs: 30_000 });
    expect(outcome.result.exitCode).toBe(0);
    await expectNoJobDirs(worker);
  });
});
