/**
 * The client side of one Compile call: stream the header and the LZ4-compressed source, collect
 * the output chunks and the result.
 */
import * as grpc from '@grpc/grpc-js';
import { decodeChunk, encodeChunk, splitIntoChunks } from '../proto/chunks';
import { FerryError } from '../proto/errors';
import type { WorkerClient } from '../proto/generated/ferry/v1/Worker';
import type { JobHeader } from '../proto/generated/ferry/v1/JobHeader';
import type { SourceFile } from '../proto/generated/ferry/v1/SourceFile';
import type { JobResult__Output } from '../proto/generated/ferry/v1/JobResult';
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

export function compileRemotely(client: WorkerClient, header: JobHeader, source: Buffer, options: RemoteOptions): Promise<RemoteOutcome> {
  return new Promise((resolve, reject) => {
    const call = client.Compile({ deadline: Date.now() + options.deadlineMs });
    const onAbort = () => call.cancel();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    const outputs: Buffer[][] = (header.outputs ?? []).map(() => []);
    let result: JobResult__Output | undefined;
    let bytesSent = 0;
    let bytesReceived = 0;
    let failure: Error | undefined;

    let settled = false;
    const settle = (outcome: () => void) => {
      if (settled) return;
      settled = true;
      options.signal?.removeEventListener('abort', onAbort);
      outcome();
    };
    // The result message completes the job (every output arrived before it): the status trailers
    // that follow add nothing but a wait, so the job does not wait for them.
    const complete = (done: JobResult__Output) => {
      const joined = outputs.map((parts) => Buffer.concat(parts));
      const sizes = done.outputSizes;
      for (let i = 0; i < joined.length; i++) {
        if (done.exitCode === 0 && joined[i].length !== (sizes[i] ?? 0)) {
          return reject(new RemoteFailure(`output #${i} arrived with ${joined[i].length} bytes, worker said ${sizes[i]}`, undefined, true));
        }
      }
      resolve({ result: done, outputs: joined, bytesSent, bytesReceived });
    };

    call.on('data', (reply: CompileReply__Output) => {
      try {
        if (reply.part === 'output' && reply.output?.chunk) {
          const slot = outputs[reply.output.output];
          if (!slot) throw new RemoteFailure(`worker sent output #${reply.output.output}, which the job did not ask for`, undefined, true);
          bytesReceived += reply.output.chunk.data.length;
          slot.push(decodeChunk(reply.output.chunk));
        } else if (reply.part === 'wanted' && reply.wanted) {
          void sourceFiles(reply.wanted.paths, options.readSource).then(
            (files) => {
              call.write({ files: { files } });
              call.end();
            },
            (err: unknown) => {
              failure = err as Error;
              call.cancel();
            },
          );
        } else if (reply.part === 'result' && reply.result && !failure) {
          result = reply.result;
          call.end();
          settle(() => complete(result!));
        }
      } catch (err) {
        failure = err as Error;
        call.cancel();
      }
    });
    // Stays attached after the job settled: a late error (the trailers lost) must not go unhandled.
    call.on('error', (err: grpc.ServiceError) =>
      settle(() => {
        if (failure) return reject(failure);
        if (options.signal?.aborted) return reject(new FerryError('cancelled', 'job cancelled'));
        reject(new RemoteFailure(`worker: ${err.details || err.message}`, err.code, HOST_FAULTS.has(err.code)));
      }),
    );
    call.on('end', () =>
      settle(() => {
        if (failure) return reject(failure);
        if (!result) return reject(new RemoteFailure('worker closed the job without a result', undefined, true));
        complete(result);
      }),
    );

    call.write({ header });
    for (const chunk of splitIntoChunks(source)) {
      bytesSent += (chunk.data as Buffer).length;
      call.write({ source: chunk });
    }
    // The request side stays open: the worker may still ask for source files (SourcesWanted).
    call.write({ end: { totalSize: source.length } });
  });
}
