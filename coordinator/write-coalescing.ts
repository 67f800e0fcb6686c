/**
 * One write per tick on a socket. ssh2 (without its optional native binding, which cannot be built
 * offline) writes every SSH packet as three pieces: length, ciphertext and tag. With TCP_NODELAY
 * each piece would be its own syscall and its own TCP segment, which sshd then reads piece by
 * piece. Corking until the end of the tick sends everything written in it as one writev.
 */
import type { Socket } from 'node:net';

export function coalesceWrites(socket: Socket): void {
  const write = socket.write;
  let corked = false;
  const uncork = () => {
    corked = false;
    socket.uncork();
  };
  socket.write = function (this: Socket, ...args: Parameters<Socket['write']>) {
    if (!corked) {
      corked = true;
      socket.cork();
      process.nextTick(uncork);
    }
    return write.apply(this, args);
  } as Socket['write'];
}
