/** The error a job ends with: a FerryError carrying the gRPC status the call ends with. */
import type * as grpc from '@grpc/grpc-js';
import { FerryError } from '../proto/errors';

export class JobRefused extends FerryError {
  constructor(readonly status: grpc.status, code: string, message: string, hint?: string) {
    super(code, message, hint);
  }
}
