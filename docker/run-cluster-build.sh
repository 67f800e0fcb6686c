#!/usr/bin/env bash
# The one command of the container cluster (docker/compose.yaml), run inside the initiator:
#   1. SSH to the remotes: a key (published to the remotes through the shared keys volume), known_hosts from
#      ssh-keyscan of the remotes as they start, ~/.ssh/config, FERRY_HOSTS. Skipped when FERRY_HOSTS and
#      FERRY_SSH_CONFIG are both set already (the tests' network-namespace cluster sets both).
#   2. builds the sample project with `make -j8 CC="ferry gcc"`, then again locally with plain gcc;
#   3. compares every object (byte for byte) and dependency file (build directory names aside);
#   4. prints `ferry stats`.
# Exit status 0 only when every file matches and every compile went to a remote: a silent local fallback
# would make the comparison meaningless.
#
# Settings (environment): FERRY_SAMPLE (the project, /sample), FERRY_REMOTES ("remote1 remote2"),
# FERRY_REMOTE_USER (builder), FERRY_KEYS_DIR (/keys), FERRY_WORKER_SOCKET (/run/ferry/worker.sock),
# FERRY_JOBS (8), FERRY_SSH_WAIT (seconds to wait for each remote's sshd, 60).
set -euo pipefail

sample=${FERRY_SAMPLE:-/sample}
remotes=${FERRY_REMOTES:-remote1 remote2}
remote_user=${FERRY_REMOTE_USER:-builder}
keys=${FERRY_KEYS_DIR:-/keys}
socket=${FERRY_WORKER_SOCKET:-/run/ferry/worker.sock}
jobs=${FERRY_JOBS:-8}
ssh_wait=${FERRY_SSH_WAIT:-60}

say() { printf '== %s\n' "$*"; }
die() { printf 'run-cluster-build: %s\n' "$*" >&2; exit 1; }

for tool in ferry make gcc cmp node; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH"
done
[ -f "$sample/Makefile" ] || die "no Makefile in $sample (set FERRY_SAMPLE)"

work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-cluster-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

setup_ssh() {
  local dir="$HOME/.ssh"
  mkdir -p "$dir"
  chmod 700 "$dir"
  if [ ! -f "$dir/id_ed25519" ]; then
    ssh-keygen -q -t ed25519 -N '' -C "ferry-initiator@$(hostname)" -f "$dir/id_ed25519"
  fi
  # The remotes' sshd reads authorized_keys from the shared volume at every login, so the key works as soon
  # as it is there. Appended, not replaced: keys others added stay.
  local pub
  pub=$(cat "$dir/id_ed25519.pub")
  [ -d "$keys" ] || die "$keys (the keys volume shared with the remotes) does not exist"
  touch "$keys/authorized_keys"
  grep -qxF "$pub" "$keys/authorized_keys" || printf '%s\n' "$pub" >>"$keys/authorized_keys"
  chmod 644 "$keys/authorized_keys"

  # The remotes make their host keys when they first start; learn them now, over the compose network
  # (trust on first use, as a first `ssh` would, but for the whole run at once). Bounded wait per remote.
  local known="$dir/known_hosts" r i
  : >"$known.new"
  for r in $remotes; do
    for ((i = 1; ; i++)); do
      if ssh-keyscan -T 2 -t ed25519 "$r" 2>/dev/null | grep -v '^#' >"$work/keyscan" && [ -s "$work/keyscan" ]; then
        cat "$work/keyscan" >>"$known.new"
        break
      fi
      [ "$i" -lt "$ssh_wait" ] || die "$r: sshd did not answer within $ssh_wait s"
      sleep 1
    done
  done
  mv "$known.new" "$known"

  {
    printf 'Host %s\n' "$remotes"
    printf '  User %s\n' "$remote_user"
    printf '  IdentityFile %s\n' "$dir/id_ed25519"
    printf '  IdentitiesOnly yes\n'
    printf '  UserKnownHostsFile %s\n' "$known"
    printf '  StrictHostKeyChecking yes\n'
    printf '  BatchMode yes\n'
    printf '  ConnectTimeout 10\n'
  } >"$dir/config"
  chmod 600 "$dir/config"
  export FERRY_SSH_CONFIG="$dir/config"

  if [ -z "${FERRY_HOSTS:-}" ]; then
    FERRY_HOSTS=""
    for r in $remotes; do FERRY_HOSTS+="${FERRY_HOSTS:+ }$r,socket=$socket"; done
    export FERRY_HOSTS
  fi
  for r in $remotes; do
    ssh -F "$FERRY_SSH_CONFIG" "$r" true || die "$r: ssh $remote_user@$r does not work (see above)"
  done
}

if [ -n "${FERRY_HOSTS:-}" ] && [ -n "${FERRY_SSH_CONFIG:-}" ]; then
  say "SSH set up already: FERRY_SSH_CONFIG=$FERRY_SSH_CONFIG"
else
  setup_ssh
fi
say "FERRY_HOSTS=$FERRY_HOSTS"

# A coordinator left from an earlier run would still have that run's settings; the next compile starts a new one.
ferry stop >/dev/null 2>&1 || true

remote_jobs() {
  ferry stats --json | node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => console.log(JSON.parse(s).jobs.remote))'
}
before=$(remote_jobs)

say "make -j$jobs CC=\"ferry gcc\" in $sample"
start=$(date +%s%N)
make -s -C "$sample" -j"$jobs" BUILD="$work/ferry" CC="ferry gcc" objects
ms=$((($(date +%s%N) - start) / 1000000))
say "built through Ferry in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s"

say "the same build locally (make -j$jobs CC=gcc)"
make -s -C "$sample" -j"$jobs" BUILD="$work/local" CC=gcc objects

say "comparing every object and dependency file"
(cd "$work/local" && find . -type f \( -name '*.o' -o -name '*.d' \) | sort) >"$work/local.list"
(cd "$work/ferry" && find . -type f \( -name '*.o' -o -name '*.d' \) | sort) >"$work/ferry.list"
cmp -s "$work/local.list" "$work/ferry.list" || die "the two builds made different files: $(diff "$work/local.list" "$work/ferry.list" | tr '\n' ' ')"
objects=0
differ=0
while IFS= read -r file; do
  case "$file" in
    *.o)
      objects=$((objects + 1))
      cmp -s "$work/local/$file" "$work/ferry/$file" || { echo "differs: $file"; differ=$((differ + 1)); }
      ;;
    *.d)
      # A dependency file names its object, which is in a different build directory.
      cmp -s <(sed "s|$work/local|@BUILD@|g" "$work/local/$file") <(sed "s|$work/ferry|@BUILD@|g" "$work/ferry/$file") ||
        { echo "differs: $file"; differ=$((differ + 1)); }
      ;;
  esac
done <"$work/local.list"
[ "$objects" -gt 0 ] || die "the build made no objects"
files=$(wc -l <"$work/local.list")

say "ferry stats"
ferry stats
after=$(remote_jobs)
remote=$((after - before))

[ "$differ" -eq 0 ] || die "$differ of $files files differ from the local build"
[ "$remote" -eq "$objects" ] || die "only $remote of $objects compiles went to a remote (ferry stats above says why)"
say "OK: $objects objects and $((files - objects)) dependency files identical to the local build; $remote compiles ran remotely"
