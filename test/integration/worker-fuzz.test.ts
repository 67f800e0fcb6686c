/**
 * Random and mutated Jobs streams against a real worker, for a bounded time: it must never
 * crash, every job must end (a result, a JobError, or its stream's status) before its deadline,
 * and its temp area must be empty at the end. The seed is printed; FERRY_FUZZ_SEED=<n> makes the same mutations (call i is drawn
 * from its own generator, whatever the timing), FERRY_FUZZ_MS sets the length of the run.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { compressSync } from 'lz4-napi';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { idleJobDirs, leftoverFiles } from '../support/job-files';
import { encodeChunk } from '../../proto/chunks';
import { loadWorkerProto } from '../../proto/load';
import type { WorkerClient } from '../../proto/generated/ferry/v1/Worker';
import type { JobHeader } from '../../proto/generated/ferry/v1/JobHeader';
import type { CompileRequest } from '../../proto/generated/ferry/v1/CompileRequest';
import type { CompileReply__Output } from '../../proto/generated/ferry/v1/CompileReply';
import type { WorkerDescription__Output } from '../../proto/generated/ferry/v1/WorkerDescription';
import { startProcess, WORKER_MAIN, type Started } from '../support/processes';

const DURATION_MS = Number(process.env.FERRY_FUZZ_MS) || 20_000;
const MAX_ITERATIONS = 5000;
const CONCURRENCY = 8;
const CALL_DEADLINE_MS = 8000;
/** A call with no status this long after its deadline is a hang. */
const HANG_MARGIN_MS = 5000;
const SEED = Number(process.env.FERRY_FUZZ_SEED) || Math.floor(Math.random() * 2 ** 31);

/** mulberry32: small, seedable, good enough to pick mutations. */
function makeRng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(items: readonly T[]): T => items[int(items.length)];
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));
  return { next, int, pick, bytes, chance: (p: number) => next() < p };
}
type Rng = ReturnType<typeof makeRng>;

const gccVersion = execFileSync('gcc', ['--version'], { encoding: 'utf8' }).split('\n')[0];
const GOOD_SOURCE = execFileSync('gcc', ['-E', '-fdirectives-only', '-x', 'c', '-'], { input: '#include <stddef.h>\nsize_t size(void) { return sizeof(int); }\n' });
const WARNING_SOURCE = Buffer.from('# 1 "/src/warn.c"\nint f(void) { int unused; return 0; }\n');

const ODD_STRINGS = ['', ' ', '../gcc', '/usr/bin/gcc', 'gcc\0', 'g++ ', 'ｇｃｃ', '\ud800', 'x'.repeat(10_000), '-c', '%s%n', 'a/../../b', 'gcc;id', '\n'];
const ARG_POOL = [
  '-c', '-S', '-O2', '-g', '-Wall', '-fPIC', '-std=c11', '-fdirectives-only', '-E', '-o', '/etc/passwd', '-fplugin=x.so', '-B/tmp', '@f',
  '-save-temps', '--sysroot=/', '-MD', '-Wa,-al', '-fdump-tree-all', '-x', 'c', '-', '', '-fprofile-generate', 'input.c', '-D\0',
  '-ftemplate-depth=100000', '-Werror', '-w', '-fsyntax-only', '-v', '--help', '-Wl,-plugin=x', `-fplugin=${'y'.repeat(50_000)}`,
  `-DLONG=${'z'.repeat(100_000)}`,
];

interface Plan {
  kind: string;
  messages: CompileRequest[];
  /** Raw bytes sent as messages (not a CompileRequest at all). */
  raw?: Buffer[];
  finish: 'end' | 'open' | { cancelAfterMs: number; byMessage: boolean };
  /** Answer to SourcesWanted, when the worker asks. */
  answer?: (paths: string[]) => CompileRequest;
}

function validHeader(rng: Rng, source: Buffer, overrides: Partial<JobHeader> = {}): JobHeader {
  return {
    jobId: `fuzz-${rng.int(1e9)}`,
    compiler: 'gcc',
    compilerVersion: gccVersion,
    args: ['-O1', '-c'],
    language: 'C',
    outputs: [{ kind: 'OBJECT', name: 'out.o' }],
    sourceSize: source.length,
    sourceName: 'fuzz.c',
    ...overrides,
  };
}

function validJob(rng: Rng, source = GOOD_SOURCE, overrides: Partial<JobHeader> = {}): CompileRequest[] {
  return [{ header: validHeader(rng, source, overrides) }, { source: encodeChunk(source, rng.chance(0.5)) }, { end: { totalSize: source.length } }];
}

function randomChunk(rng: Rng): CompileRequest {
  const size = rng.chance(0.05) ? (3 << 19) + rng.int(1 << 16) : rng.int(4096);
  const data = rng.bytes(size);
  if (rng.chance(0.3)) {
    // A real LZ4 block, whose size prefix is sometimes a lie.
    const packed = compressSync(data);
    if (rng.chance(0.5)) packed.writeUInt32LE(rng.int(2 ** 32), 0);
    return { source: { compression: 'LZ4_BLOCK', data: packed } };
  }
  return { source: { compression: rng.pick(['NONE', 'LZ4_BLOCK'] as const), data } };
}

const MUTATIONS: Record<string, (rng: Rng) => Plan> = {
  valid: (rng) => ({ kind: 'valid', messages: validJob(rng), finish: 'end' }),
  shuffled: (rng) => {
    const parts: CompileRequest[] = [...validJob(rng), { files: { files: [] } }, { header: validHeader(rng, GOOD_SOURCE) }, {}];
    const messages = Array.from({ length: 1 + rng.int(6) }, () => rng.pick(parts));
    return { kind: 'shuffled', messages, finish: rng.pick(['end', 'end', 'open'] as const) };
  },
  'huge-size': (rng) => {
    const size = rng.pick([2 ** 31, 2 ** 32 + 5, 2 ** 53 - 1, (1 << 20) + 1, 0]);
    return { kind: 'huge-size', messages: [{ header: validHeader(rng, GOOD_SOURCE, { sourceSize: size }) }, randomChunk(rng), { end: { totalSize: rng.pick([size, 0, GOOD_SOURCE.length]) } }], finish: 'end' };
  },
  'odd-names': (rng) => {
    const overrides: Partial<JobHeader> = {};
    const field = rng.pick(['compiler', 'output', 'sourcePath', 'cwd', 'env', 'compilerVersion', 'jobId'] as const);
    const odd = rng.pick(ODD_STRINGS);
    if (field === 'output') overrides.outputs = [{ kind: 'OBJECT', name: rng.pick([odd, '/abs.o', '../x.o', 'dir/../../x.o', 'd/ok.o', 'nul\0.o']) }];
    else if (field === 'env') overrides.env = { [rng.pick(['LANG', 'LD_PRELOAD', 'PATH', odd || 'X'])]: odd };
    else if (field === 'sourcePath') overrides.sourcePath = rng.pick([odd, '/etc/passwd', '../../../../x.c', 'ok.c']);
    else if (field === 'cwd') overrides.cwd = rng.pick([odd, '/../..', 'relative', '/ok']);
    else overrides[field] = odd;
    return { kind: 'odd-names', messages: validJob(rng, GOOD_SOURCE, overrides), finish: 'end' };
  },
  'bad-enum': (rng) => {
    const job = validJob(rng);
    const which = rng.int(3);
    if (which === 0) job[0].header!.language = rng.pick([0, 5, 99, 2 ** 31 - 1]) as unknown as 'C';
    if (which === 1) job[0].header!.outputs = [{ kind: 77 as unknown as 'OBJECT', name: 'out.o' }];
    if (which === 2) job[1] = { source: { compression: rng.pick([2, 99, -1]) as unknown as 'NONE', data: GOOD_SOURCE } };
    return { kind: 'bad-enum', messages: job, finish: 'end' };
  },
  'random-chunks': (rng) => {
    const chunks = Array.from({ length: 1 + rng.int(4) }, () => randomChunk(rng));
    const total = chunks.reduce((n, c) => n + c.source!.data!.length, 0);
    const size = rng.chance(0.5) ? total : rng.int(1 << 21);
    return { kind: 'random-chunks', messages: [{ header: validHeader(rng, GOOD_SOURCE, { sourceSize: size }) }, ...chunks, { end: { totalSize: rng.pick([size, total]) } }], finish: 'end' };
  },
  truncated: (rng) => {
    const job = validJob(rng);
    return { kind: 'truncated', messages: job.slice(0, rng.int(job.length)), finish: rng.pick(['end', 'open'] as const) };
  },
  cancelled: (rng) => ({ kind: 'cancelled', messages: validJob(rng), finish: { cancelAfterMs: rng.int(300), byMessage: rng.chance(0.5) } }),
  // Several jobs on the stream: job numbers that are odd, reused, or interleaved with job 1's messages.
  numbering: (rng) => {
    const messages: CompileRequest[] = validJob(rng);
    for (let i = 0; i < 1 + rng.int(6); i++) {
      const job = rng.pick([0, 1, 2, 3, 2 ** 32 - 1]);
      const part = rng.pick([...validJob(rng), { cancel: {} }, { files: { files: [] } }, {}]);
      messages.splice(rng.int(messages.length + 1), 0, { ...part, job });
    }
    return { kind: 'numbering', messages, finish: rng.pick(['end', 'open'] as const) };
  },
  // Two good jobs whose messages interleave: both must compile.
  interleaved: (rng) => {
    const [a, b] = [validJob(rng), validJob(rng).map((m) => ({ ...m, job: 2 }))];
    const messages: CompileRequest[] = [];
    while (a.length || b.length) messages.push(((rng.chance(0.5) && a.length) || !b.length ? a : b).shift()!);
    return { kind: 'interleaved', messages, finish: 'end' };
  },
  'random-args': (rng) => {
    const args = Array.from({ length: rng.int(8) }, () => rng.pick(ARG_POOL));
    return { kind: 'random-args', messages: validJob(rng, GOOD_SOURCE, { args }), finish: 'end' };
  },
  'garbage-bytes': (rng) => ({ kind: 'garbage-bytes', messages: [], raw: Array.from({ length: 1 + rng.int(3) }, () => rng.bytes(rng.int(200))), finish: 'end' }),
  'wanted-files': (rng) => ({
    kind: 'wanted-files',
    messages: validJob(rng, WARNING_SOURCE, { args: ['-Wall', '-c'], cwd: '/src', sourceExcerpts: true }),
    finish: 'open',
    // The worker asks for /src/warn.c; answer with nonsense as often as with the file.
    answer: (paths) => ({
      files: {
        files: [
          ...paths.map((path) => ({ path, content: rng.chance(0.5) ? encodeChunk(WARNING_SOURCE) : randomChunk(rng).source })),
          { path: rng.pick(['/etc/shadow', '../../x', '', '/src/other.c']), content: encodeChunk(rng.bytes(rng.int(100))) },
        ],
      },
    }),
  }),
};

/**
 * Runs one plan on a Jobs stream of its own; resolves with how its job 1 ended: OK (a result), a
 * JobError's code, the stream's status when the stream ended first (CANCELLED when the plan
 * cancelled the job), or 'HANG' when nothing came in time.
 */
function execute(plan: Plan, client: WorkerClient, raw: grpc.Client): Promise<{ status: string; details: string }> {
  return new Promise((resolve) => {
    const deadline = Date.now() + CALL_DEADLINE_MS;
    // Both kinds of call take any message here: the raw one bytes, the other CompileRequests.
    const call = (
      plan.raw
        ? raw.makeBidiStreamRequest('/ferry.v1.Worker/Jobs', (b: Buffer) => b, (b: Buffer) => b, new grpc.Metadata(), { deadline })
        : client.Jobs({ deadline })
    ) as grpc.ClientDuplexStream<any, any>;
    let cancelled = false;
    let settled = false;
    const settle = (status: string, details: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(guard);
      resolve({ status, details });
      call.cancel();
    };
    const guard = setTimeout(() => settle('HANG', ''), CALL_DEADLINE_MS + HANG_MARGIN_MS);
    call.on('status', (status: grpc.StatusObject) =>
      settle(cancelled && status.code === grpc.status.OK ? 'CANCELLED' : grpc.status[status.code], status.details));
    call.on('error', () => undefined); // the status is what is counted
    call.on('data', (reply: CompileReply__Output | Buffer) => {
      if (Buffer.isBuffer(reply) || reply.job !== 1) return;
      if (reply.part === 'result') settle('OK', '');
      else if (reply.part === 'error' && reply.error) settle(grpc.status[reply.error.code] ?? String(reply.error.code), reply.error.details);
      else if (reply.part === 'wanted' && reply.wanted && plan.answer) call.write({ job: 1, ...plan.answer(reply.wanted.paths) });
    });
    for (const message of plan.raw ?? plan.messages.map((m) => ({ job: 1, ...m }))) call.write(message);
    if (plan.finish === 'end') call.end();
    else if (plan.finish !== 'open') {
      const { cancelAfterMs, byMessage } = plan.finish;
      setTimeout(() => {
        cancelled = true;
        // A Cancel message stops the job alone; the half-close then ends the stream, idle.
        if (byMessage) {
          call.write({ job: 1, cancel: {} });
          call.end();
        } else {
          call.cancel();
        }
      }, cancelAfterMs);
    }
  });
}

describe('worker fuzzing', () => {
  let dir: string;
  let tmp: string;
  let worker: Started;
  const clients: WorkerClient[] = [];
  const raws: grpc.Client[] = [];

  function describeWorker(): Promise<WorkerDescription__Output> {
    return new Promise((resolve, reject) =>
      clients[0].Describe({}, { deadline: Date.now() + 10_000 }, (err, reply) => (err || !reply ? reject(err) : resolve(reply))),
    );
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-fuzz-'));
    tmp = join(dir, 'tmp');
    mkdirSync(tmp);
    const socket = join(dir, 'w.sock');
    writeFileSync(
      join(dir, 'worker.conf'),
      [`listen = unix:${socket}`, `tmpdir = ${tmp}`, 'allow = gcc,g++', 'slots = 2', 'max_jobs_per_connection = 3',
        'max_source_mb = 1', 'max_compressed_source_mb = 1', 'max_object_mb = 1', 'job_timeout = 3', ''].join('\n'),
    );
    worker = await startProcess(process.execPath, [WORKER_MAIN, '--config', join(dir, 'worker.conf')], /listening on/);
    const proto = loadWorkerProto();
    // Two connections, so per-connection turns and the shared slots both see traffic.
    for (let i = 0; i < 2; i++) {
      clients.push(new proto.ferry.v1.Worker(`unix://${socket}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }));
      raws.push(new grpc.Client(`unix://${socket}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }));
    }
  });

  afterAll(async () => {
    for (const c of [...clients, ...raws]) c.close();
    await worker?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it(`survives ${DURATION_MS / 1000} s of random and mutated streams`, async () => {
    const kinds = Object.keys(MUTATIONS);
    const byKind = new Map<string, Map<string, number>>();
    const byStatus = new Map<string, number>();
    const count = (kind: string, status: string) => {
      const row = byKind.get(kind) ?? new Map<string, number>();
      row.set(status, (row.get(status) ?? 0) + 1);
      byKind.set(kind, row);
      byStatus.set(status, (byStatus.get(status) ?? 0) + 1);
    };
    const stopAt = Date.now() + DURATION_MS;
    let iterations = 0;
    /** Worker faults (INTERNAL) on requests that are not plain garbage bytes: each is a bug to look at. */
    const internal: string[] = [];
    const lane = async (index: number) => {
      while (Date.now() < stopAt && iterations < MAX_ITERATIONS) {
        const rng = makeRng(SEED + iterations++ * 7919);
        const plan = MUTATIONS[rng.pick(kinds)](rng);
        const { status, details } = await execute(plan, clients[index % 2], raws[index % 2]);
        count(plan.kind, status);
        if (status === 'INTERNAL' && !plan.raw) internal.push(`${plan.kind}: ${details}`);
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, (_, i) => lane(i)));

    const lines = [`worker fuzz: seed ${SEED}, ${iterations} calls in ${DURATION_MS / 1000} s, ${CONCURRENCY} at a time`];
    for (const kind of kinds) {
      const row = byKind.get(kind) ?? new Map();
      const total = [...row.values()].reduce((a, b) => a + b, 0);
      lines.push(`  ${kind.padEnd(14)} ${String(total).padStart(5)}  ${[...row].sort((a, b) => b[1] - a[1]).map(([s, n]) => `${s} ${n}`).join(', ')}`);
    }
    lines.push(`  by status: ${[...byStatus].sort((a, b) => b[1] - a[1]).map(([s, n]) => `${s} ${n}`).join(', ')}`);
    console.log(lines.join('\n'));

    expect(byStatus.get('HANG') ?? 0).toBe(0);
    // grpc-js itself answers undecodable bytes with INTERNAL; the worker's own refusals never are.
    expect(internal).toEqual([]);
    // Every well-formed job compiled, whatever ran beside it.
    expect([...(byKind.get('valid') ?? new Map()).keys()]).toEqual(['OK']);
    expect([...(byKind.get('interleaved') ?? new Map()).keys()]).toEqual(['OK']);
    expect(iterations).toBeGreaterThan(50);

    // Still alive and answering, idle, and nothing left behind.
    expect(worker.child.exitCode).toBeNull();
    const described = await describeWorker();
    expect(described.slots).toBe(2);
    let load = described;
    for (let i = 0; i < 100 && (load.running > 0 || load.queued > 0); i++) {
      await new Promise((r) => setTimeout(r, 100));
      load = await describeWorker();
    }
    expect(load).toMatchObject({ running: 0, queued: 0 });
    // Nothing of any job is left; emptied job directories wait for the next job, one per slot at most.
    for (let i = 0; i < 100 && leftoverFiles(tmp).length > 0; i++) await new Promise((r) => setTimeout(r, 50));
    expect(leftoverFiles(tmp)).toEqual([]);
    expect(idleJobDirs(tmp).length).toBeLessThanOrEqual(2);
    expect(worker.output()).not.toMatch(/could not remove|Uncaught|TypeError|RangeError/);
  }, DURATION_MS + 60_000);
});
