#!/bin/bash
# Entry point of a Ferry remote container. There is no systemd here, so this does what
# ferry-worker.service would (RuntimeDirectory=ferry, User=ferry, UMask=0007), then runs sshd in the
# foreground. If either the worker or sshd exits, the other is stopped and the container exits with its
# status, so a broken worker is seen (and restarted by compose) rather than hidden behind a live sshd.
set -euo pipefail

# Host keys are made per container at its first start, not baked into the image (remote1 and remote2
# would share them otherwise). The initiator learns them with ssh-keyscan.
ssh-keygen -A >/dev/null
install -d -m 0755 /run/sshd
install -d -o ferry -g ferry -m 0750 /run/ferry

setpriv --reuid=ferry --regid=ferry --init-groups --no-new-privs \
  sh -c 'umask 0007; exec ferry-worker --config /etc/ferry/worker.conf' &
worker=$!

# sshd starts once the worker listens, so "sshd answers" means "the remote is ready". Bounded: 30 s.
for _ in $(seq 1 300); do
  [ -S /run/ferry/worker.sock ] && break
  kill -0 "$worker" 2>/dev/null || { wait "$worker" || exit $?; exit 1; }
  sleep 0.1
done
if [ ! -S /run/ferry/worker.sock ]; then
  echo "remote-entrypoint: ferry-worker did not create /run/ferry/worker.sock within 30 s" >&2
  kill "$worker" 2>/dev/null || true
  exit 1
fi

/usr/sbin/sshd -D -e &
sshd=$!

stop() {
  kill -TERM "$worker" "$sshd" 2>/dev/null || true
}
trap stop TERM INT

set +e
wait -n "$worker" "$sshd"
status=$?
stop
wait
exit "$status"
