/**
 * One Jobs stream (see ferry.proto): many jobs over one gRPC call. Each message is routed to its
 * job by number; each job sees a JobCall of its own, and its replies go out tagged with its number.
 * A job's messages wait here until its handler listens (a job waiting for its connection's turn
 * reads nothing yet), within a byte budget for the whole stream.
 */
import { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { FerryError } from '../proto/errors';
import type { CompileRequest__Output } from '../proto/generated/ferry/v1/CompileRequest';
import type { CompileReply } from '../proto/generated/ferry/v1/CompileReply';

/** What one job's handler sees of the stream it came on. */
export interface JobCall {
  /** The job's number on its stream (for the log). */
  readonly number: number;
  /** The client's connection (its HTTP/2 session): max_jobs_per_connection counts per connection. */
  readonly connection: object;
  /** 'data': the job's next request; 'end': no more will come (the client closed the stream). */
  on(event: 'data', listener: (message: CompileRequest__Output) => void): this;
  off(event: 'data', listener: (message: CompileRequest__Output) => void): this;
  once(event: 'end' | 'cancelled', listener: () => void): this;
  off(event: 'end' | 'cancelled', listener: () => void): this;
  write(reply: CompileReply): void;
  /** The job is over (its result was written). */
  end(): void;
  /** The job cannot be done: the client gets a JobError with the status code and message. */
  fail(code: grpc.status, details: string): void;
}

export type JobsStream = grpc.ServerDuplexStream<CompileRequest__Output, CompileReply>;

export interface JobStreamLimits {
  /** Requests held for jobs whose handler is not reading yet, in bytes, for the whole stream. */
  maxHeldBytes: number;
  /** Jobs open at once on one stream. */
  maxOpenJobs: number;
}

/** Bytes a request holds in memory while it waits (its payloads; the rest is small). */
function requestBytes(message: CompileRequest__Output): number {
  if (message.source) return message.source.data.length;
  if (message.files) return message.files.files.reduce((n, f) => n + (f.content?.data.length ?? 0), 0);
  return 64;
}

class StreamJob extends EventEmitter implements JobCall {
  private held: Array<CompileRequest__Output | 'end'> = [];
  private heldBytes = 0;
  private flushing = false;
  done = false;

  constructor(
    readonly number: number,
    readonly connection: object,
    private readonly stream: JobStream,
  ) {
    super();
    // A handler that starts listening gets what came meanwhile, in order.
    this.on('newListener', (event: string) => {
      if (event === 'data' && this.held.length > 0 && !this.flushing) {
        this.flushing = true;
        queueMicrotask(() => this.flush());
      }
    });
  }

  /** A request for this job; held while nobody listens, counted in the stream's budget. */
  deliver(message: CompileRequest__Output | 'end'): void {
    if (this.done) return;
    if (this.held.length === 0 && this.listenerCount('data') > 0) {
      if (message === 'end') this.emit('end');
      else this.emit('data', message);
      return;
    }
    this.held.push(message);
    const bytes = message === 'end' ? 0 : requestBytes(message);
    this.heldBytes += bytes;
    this.stream.heldBytes += bytes;
  }

  private flush(): void {
    this.flushing = false;
    while (this.held.length > 0 && this.listenerCount('data') > 0 && !this.done) {
      const message = this.held.shift()!;
      if (message === 'end') {
        this.emit('end');
        continue;
      }
      const bytes = requestBytes(message);
      this.heldBytes -= bytes;
      this.stream.heldBytes -= bytes;
      this.emit('data', message);
    }
  }

  write(reply: CompileReply): void {
    if (this.done || this.stream.call.cancelled || this.stream.call.destroyed) return;
    reply.job = this.number;
    this.stream.call.write(reply);
  }

  end(): void {
    if (this.done) return;
    this.done = true;
    this.stream.heldBytes -= this.heldBytes;
    this.held = [];
    this.stream.jobEnded(this);
  }

  fail(code: grpc.status, details: string): void {
    this.write({ error: { code, details } });
    this.end();
  }

  cancel(): void {
    if (this.done) return;
    this.emit('cancelled');
    this.end();
  }
}

/** The demultiplexer of one Jobs call; `startJob` runs each job's handler. */
class JobStream {
  readonly jobs = new Map<number, StreamJob>();
  heldBytes = 0;
  private clientEnded = false;
  private closed = false;

  constructor(
    readonly call: JobsStream,
    private readonly connection: object,
    private readonly limits: JobStreamLimits,
    private readonly startJob: (job: JobCall) => void,
  ) {
    call.on('data', (message: CompileRequest__Output) => this.route(message));
    call.once('end', () => {
      this.clientEnded = true;
      for (const job of [...this.jobs.values()]) job.deliver('end');
      this.endIfIdle();
    });
    // The client cancelled the stream or the connection broke: every job on it stops.
    const lost = () => this.close();
    call.once('cancelled', lost);
    call.once('close', lost);
    call.once('error', lost);
  }

  private route(message: CompileRequest__Output): void {
    if (this.closed) return;
    const number = message.job;
    if (!number) return this.abort(grpc.status.INVALID_ARGUMENT, `a "${message.part ?? 'empty'}" message without its job number`);
    let job = this.jobs.get(number);
    if (message.part === 'cancel') {
      job?.cancel();
      return;
    }
    if (!job) {
      if (this.jobs.size >= this.limits.maxOpenJobs) {
        this.call.write({ job: number, error: { code: grpc.status.RESOURCE_EXHAUSTED, details: `more than ${this.limits.maxOpenJobs} jobs open on one stream` } });
        return;
      }
      job = new StreamJob(number, this.connection, this);
      this.jobs.set(number, job);
      this.startJob(job);
    }
    job.deliver(message);
    if (this.heldBytes > this.limits.maxHeldBytes) {
      this.abort(grpc.status.RESOURCE_EXHAUSTED, `jobs waiting for their turn hold more than ${this.limits.maxHeldBytes} bytes of requests`);
    }
  }

  jobEnded(job: StreamJob): void {
    this.jobs.delete(job.number);
    this.endIfIdle();
  }

  /** After the client's half-close, the stream ends with the last job. */
  private endIfIdle(): void {
    if (this.clientEnded && this.jobs.size === 0 && !this.closed) {
      this.closed = true;
      this.call.end();
    }
  }

  /** Ends the stream with a status; its jobs stop. */
  private abort(code: grpc.status, details: string): void {
    if (this.closed) return;
    this.close();
    this.call.emit('error', { code, details });
  }

  private close(): void {
    if (this.closed && this.jobs.size === 0) return;
    this.closed = true;
    for (const job of [...this.jobs.values()]) job.cancel();
  }
}

/**
 * The HTTP/2 session (one client connection) a call came on. grpc-js does not expose it, and a
 * call's peer string is the same for every connection to a Unix socket, so this walks the call's
 * wrappers (ServerDuplexStreamImpl.call -> ServerInterceptingCall.nextCall -> .stream) of the
 * grpc-js version package.json pins. It fails loudly rather than let the per-connection cap lapse.
 */
export function http2SessionOf(call: object): object {
  let node = call as { call?: unknown; nextCall?: unknown; stream?: { session?: object } } | undefined;
  for (let depth = 0; node && depth < 8; depth++) {
    if (node.stream?.session) return node.stream.session;
    node = (node.call ?? node.nextCall) as typeof node;
  }
  throw new FerryError('internal', "cannot find a call's HTTP/2 session: @grpc/grpc-js internals changed", 'Install the @grpc/grpc-js version package.json names.');
}

export function serveJobStream(call: JobsStream, connection: object, limits: JobStreamLimits, startJob: (job: JobCall) => void): void {
  new JobStream(call, connection, limits, startJob);
}
