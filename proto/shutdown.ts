import type * as grpc from '@grpc/grpc-js';

/** Lets calls in flight finish (a Stop reply reach its caller), then closes whatever is left. */
export function shutdownGracefully(server: grpc.Server, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const force = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(force);
      resolve();
    });
  });
}
