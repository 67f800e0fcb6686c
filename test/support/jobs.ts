/** Jobs against a worker in tests: through the coordinator's own client, or as raw messages. */
import * as grpc from '@grpc/grpc-js';
import { WorkerJobs, type RemoteOptions, type RemoteOutcome } from '../../coordinator/remote-compile';
import type { WorkerClient } from '../../proto/generated/ferry/v1/Worker';
import type { JobHeader } from '../../proto/generated/ferry/v1/JobHeader';
import type { CompileRequest } from '../../proto/generated/ferry/v1/CompileRequest';
import type { CompileReply__Output } from '../../proto/generated/ferry/v1/CompileReply';

/** One job on a stream of its own, as the coordinator sends it. */
export async function compileOnce(client: WorkerClient, header: JobHeader, source: Buffer, options: RemoteOptions): Promise<RemoteOutcome> {
  const jobs = new WorkerJobs(client);
  try {
    return await jobs.compile(header, source, options);
  } finally {
    jobs.close();
  }
}

/** How a raw job ended: its JobError, OK for its JobResult, or the status of the stream when that ended first. */
export interface JobEnd {
  code: grpc.status;
  details: string;
  /** Where the code came from. */
  from: 'job' | 'stream';
  replies: CompileReply__Output[];
}

/**
 * Sends `messages` on a new Jobs stream, each as job 1 unless it names its own `job`, half-closes the
 * stream unless `keepOpen`, and resolves with how job 1 ended.
 */
export function rawJob(client: WorkerClient, messages: CompileRequest[], options: { keepOpen?: boolean; timeoutMs?: number } = {}): Promise<JobEnd> {
  return new Promise((resolve, reject) => {
    const call = client.Jobs();
    const replies: CompileReply__Output[] = [];
    let settled = false;
    const timer = setTimeout(() => settle(() => reject(new Error('no end of the job within the time allowed'))), options.timeoutMs ?? 30_000);
    const settle = (f: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      call.cancel();
      f();
    };
    call.on('data', (reply: CompileReply__Output) => {
      replies.push(reply);
      if (reply.job !== 1) return;
      if (reply.part === 'error' && reply.error) settle(() => resolve({ code: reply.error!.code, details: reply.error!.details, from: 'job', replies }));
      if (reply.part === 'result') settle(() => resolve({ code: grpc.status.OK, details: '', from: 'job', replies }));
    });
    call.on('status', (status: grpc.StatusObject) => settle(() => resolve({ code: status.code, details: status.details, from: 'stream', replies })));
    call.on('error', () => undefined); // the status carries it
    for (const m of messages) call.write({ job: 1, ...m });
    if (!options.keepOpen) call.end();
  });
}
