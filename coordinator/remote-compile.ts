/**
 * The client side of a worker's Jobs stream (ferry.proto): one long-lived stream per host carries
 * every job, each as its header, its LZ4-compressed source and its end, tagged with a number; the
 * replies are routed back by that number. A job costs its messages, not a gRPC call.
 */
import * as grpc from '@grpc/grpc-js';
import { decodeChunk, encodeChunk, splitIntoChunks } from '../proto/chunks';
import { FerryError } from '../proto/errors';
import type { WorkerClient } from '../proto/generated/ferry/v1/Worker';
import type { JobHeader } from '../proto/generated/ferry/v1/JobHeader';
import type { SourceFile } from '../proto/generated/ferry/v1/SourceFile';
import type { JobResult__Output } from '../proto/generated/ferry/v1/JobResult';
import type { CompileRequest } from '../proto/generated/ferry/v1/CompileRequest';
import type { CompileReply__Output } from '../proto/generated/ferry/v1/CompileReply';

export interface RemoteOutcome {
  result: JobResult__Output;
  /** Each expected output's bytes, in header order (empty when the compile failed). */
  outputs: Buffer[];
  bytesSent: number;
  bytesReceived: number;
}

/** A failure of the remote path (not of the compiler): the job can go elsewhere. */
export class RemoteFailure extends FerryError {
  constructor(
    message: string,
    readonly status: grpc.status | undefined,
    /** The host is at fault (down, broken tunnel) rather than the job. */
    readonly hostFault: boolean,
  ) {
    super('remote-failed', message, 'The job is retried on another host or compiled locally.');
  }
}

const HOST_FAULTS = new Set([grpc.status.UNAVAILABLE, grpc.status.INTERNAL, grpc.status.UNKNOWN, grpc.status.DEADLINE_EXCEEDED]);

export interface RemoteOptions {
  deadlineMs: number;
  signal?: AbortSignal;
  /** Reads a file the worker's diagnostics name (for source excerpts); undefined when unreadable. */
  readSource?: (path: string) => Promise<Buffer | undefined>;
}

/** Answers SourcesWanted: each file's content, or `missing` when it cannot be read. */
async function sourceFiles(paths: string[], read: RemoteOptions['readSource']): Promise<SourceFile[]> {
  return Promise.all(
    paths.map(async (path) => {
      const content = read ? await read(path) : undefined;
      return content ? { path, content: encodeChunk(content) } : { path, missing: true };
    }),
  );
}

type Stream = grpc.ClientDuplexStream<CompileRequest, CompileReply__Output>;

/** One job in flight: its replies, and what ends it when the stream goes. */
interface PendingJob {
  reply(reply: CompileReply__Output): void;
  lost(failure: RemoteFailure): void;
}

/** The jobs of one worker connection. Opened at the first job; a stream that fails fails its jobs, and the next job opens another. */
export class WorkerJobs {
  private stream?: Stream;
  private readonly pending = new Map<number, PendingJob>();
  private nextNumber = 1;

  constructor(private readonly client: WorkerClient) {}

  /** Jobs in flight on this connection. */
  get inFlight(): number {
    return this.pending.size;
  }

  private open(): Stream {
    if (this.stream) return this.stream;
    const stream = this.client.Jobs();
    this.stream = stream;
    stream.on('data', (reply: CompileReply__Output) => this.pending.get(reply.job)?.reply(reply));
    stream.on('error', (err: grpc.ServiceError) =>
      this.lost(stream, new RemoteFailure(`worker: ${err.details || err.message}`, err.code, HOST_FAULTS.has(err.code))));
    stream.on('end', () => this.lost(stream, new RemoteFailure('the worker ended its job stream', grpc.status.UNAVAILABLE, true)));
    return stream;
  }

  private lost(stream: Stream, failure: RemoteFailure): void {
    if (this.stream === stream) this.stream = undefined;
    for (const job of [...this.pending.values()]) job.lost(failure);
  }

  /** Ends the stream; jobs still in flight fail as a lost connection's would. */
  close(): void {
    const stream = this.stream;
    if (!stream) return;
    this.lost(stream, new RemoteFailure('the connection to the worker was closed', grpc.status.UNAVAILABLE, true));
    stream.cancel();
  }

  compile(header: JobHeader, source: Buffer, options: RemoteOptions): Promise<RemoteOutcome> {
    const stream = this.open();
    const job = this.nextNumber++;
    return new Promise((resolve, reject) => {
      const outputs: Buffer[][] = (header.outputs ?? []).map(() => []);
      let bytesSent = 0;
      let bytesReceived = 0;

      const finish = (outcome: () => void) => {
        if (!this.pending.delete(job)) return;
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        outcome();
      };
      /** Stops the job at the worker too. */
      const stop = (err: Error) =>
        finish(() => {
          if (this.stream === stream) stream.write({ job, cancel: {} });
          reject(err);
        });
      const onAbort = () => stop(new FerryError('cancelled', 'job cancelled'));
      const timer = setTimeout(
        () => stop(new RemoteFailure(`worker: no result within ${options.deadlineMs / 1000} s`, grpc.status.DEADLINE_EXCEEDED, true)),
        options.deadlineMs,
      );
      // Every output arrived before the result.
      const complete = (done: JobResult__Output) => {
        const joined = outputs.map((parts) => Buffer.concat(parts));
        const sizes = done.outputSizes;
        for (let i = 0; i < joined.length; i++) {
          if (done.exitCode === 0 && joined[i].length !== (sizes[i] ?? 0)) {
            return stop(new RemoteFailure(`output #${i} arrived with ${joined[i].length} bytes, worker said ${sizes[i]}`, undefined, true));
          }
        }
        finish(() => resolve({ result: done, outputs: joined, bytesSent, bytesReceived }));
      };

      this.pending.set(job, {
        reply: (reply) => {
          try {
            if (reply.part === 'output' && reply.output?.chunk) {
              const slot = outputs[reply.output.output];
              if (!slot) throw new RemoteFailure(`worker sent output #${reply.output.output}, which the job did not ask for`, undefined, true);
              bytesReceived += reply.output.chunk.data.length;
              slot.push(decodeChunk(reply.output.chunk));
            } else if (reply.part === 'wanted' && reply.wanted) {
              sourceFiles(reply.wanted.paths, options.readSource).then(
                (files) => {
                  if (this.pending.has(job) && this.stream === stream) stream.write({ job, files: { files } });
                },
                (err: unknown) => stop(err as Error),
              );
            } else if (reply.part === 'result' && reply.result) {
              complete(reply.result);
            } else if (reply.part === 'error' && reply.error) {
              const { code, details } = reply.error;
              finish(() => reject(new RemoteFailure(`worker: ${details}`, code, HOST_FAULTS.has(code))));
            }
          } catch (err) {
            stop(err as Error);
          }
        },
        lost: (failure) => finish(() => reject(failure)),
      });
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener('abort', onAbort, { once: true });

      stream.write({ job, header });
      for (const chunk of splitIntoChunks(source)) {
        bytesSent += (chunk.data as Buffer).length;
        stream.write({ job, source: chunk });
      }
      // The job stays open: the worker may still ask for source files (SourcesWanted).
      stream.write({ job, end: { totalSize: source.length } });
    });
  }
}
