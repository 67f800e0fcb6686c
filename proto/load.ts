/**
 * Loads the wire contract from the .proto files at run time, with the options the generated types
 * in proto/generated/ were made with (build: cli/build.mjs).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as protobuf from 'protobufjs';
import type { ProtoGrpcType } from './generated/ferry';
import type { ProtoGrpcType as CoordinatorProtoGrpcType } from './generated/coordinator';
import type { LaunchRequest__Output } from './generated/ferry/launcher/v1/LaunchRequest';
import type { LaunchReply } from './generated/ferry/launcher/v1/LaunchReply';
import type { PreprocessResult, PreprocessResult__Output } from './generated/ferry/launcher/v1/PreprocessResult';

/** Where the .proto files are: beside this module in the source tree, or in proto/ above dist/. */
export function protoDir(): string {
  const candidates = [__dirname, join(__dirname, '..', '..', 'proto')];
  const found = candidates.find((dir) => existsSync(join(dir, 'ferry.proto')));
  if (!found) throw new Error(`ferry.proto not found near ${__dirname}; the installation is incomplete`);
  return found;
}

export const LOADER_OPTIONS: protoLoader.Options = {
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

let workerProto: ProtoGrpcType | undefined;
let coordinatorProto: CoordinatorProtoGrpcType | undefined;

export function loadWorkerProto(): ProtoGrpcType {
  if (!workerProto) {
    const definition = protoLoader.loadSync(join(protoDir(), 'ferry.proto'), LOADER_OPTIONS);
    workerProto = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
  }
  return workerProto;
}

/** The control service of the coordinator (status, stats, stop). */
export function loadCoordinatorProto(): CoordinatorProtoGrpcType {
  if (!coordinatorProto) {
    const definition = protoLoader.loadSync('coordinator.proto', { ...LOADER_OPTIONS, includeDirs: [protoDir()] });
    coordinatorProto = grpc.loadPackageDefinition(definition) as unknown as CoordinatorProtoGrpcType;
  }
  return coordinatorProto;
}

export interface LauncherCodec {
  decodeRequest(bytes: Uint8Array): LaunchRequest__Output;
  encodeRequest(request: Partial<LaunchRequest__Output>): Buffer;
  encodeReply(reply: LaunchReply): Buffer;
  decodeReply(bytes: Uint8Array): Required<LaunchReply>;
  decodePreprocessResult(bytes: Uint8Array): PreprocessResult__Output;
  encodePreprocessResult(result: PreprocessResult): Buffer;
}

let launcherCodec: LauncherCodec | undefined;

export function loadLauncherCodec(): LauncherCodec {
  if (launcherCodec) return launcherCodec;
  const root = protobuf.loadSync(join(protoDir(), 'launcher.proto'));
  const requestType = root.lookupType('ferry.launcher.v1.LaunchRequest');
  const replyType = root.lookupType('ferry.launcher.v1.LaunchReply');
  const preprocessType = root.lookupType('ferry.launcher.v1.PreprocessResult');
  const toObject = { longs: Number, enums: String, defaults: true, bytes: Buffer } as protobuf.IConversionOptions;
  launcherCodec = {
    decodeRequest: (bytes) => requestType.toObject(requestType.decode(bytes), toObject) as LaunchRequest__Output,
    encodeRequest: (request) => Buffer.from(requestType.encode(requestType.fromObject(request)).finish()),
    encodeReply: (reply) => Buffer.from(replyType.encode(replyType.fromObject(reply)).finish()),
    decodeReply: (bytes) => replyType.toObject(replyType.decode(bytes), toObject) as Required<LaunchReply>,
    decodePreprocessResult: (bytes) => preprocessType.toObject(preprocessType.decode(bytes), toObject) as PreprocessResult__Output,
    encodePreprocessResult: (result) => Buffer.from(preprocessType.encode(preprocessType.fromObject(result)).finish()),
  };
  return launcherCodec;
}
