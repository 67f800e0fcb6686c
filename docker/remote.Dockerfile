# syntax=docker/dockerfile:1
# A Ferry remote: Debian 12 with sshd and ferry-worker installed from the project's .deb, the way a real
# remote gets it (apt-get install ./ferry-worker_*.deb pulls Debian's nodejs). Build context: the repository.

# Stage 1: the .deb, built by `npm run package` from this checkout.
FROM node:20-bookworm AS deb
WORKDIR /src
COPY package.json package-lock.json ./
# Scripts are skipped: the package needs no native builds (ssh2's optional ones are the initiator's).
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY . .
RUN node cli/build.mjs && npm run package

# Stage 2: the remote.
FROM debian:bookworm
COPY --from=deb /src/dist/ferry-worker_*.deb /tmp/
# gcc/g++ from Debian 12, as on the initiator (Ferry sends jobs only to the same compiler version).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      /tmp/ferry-worker_*.deb gcc g++ libc6-dev openssh-server \
 && rm -rf /var/lib/apt/lists/* /tmp/ferry-worker_*.deb \
 && rm -f /etc/ssh/ssh_host_*
# The SSH user initiators log in as; the ferry group lets it open the worker's socket. No password ('*'),
# not locked ('!'), so key logins work.
RUN adduser --disabled-password --gecos '' builder \
 && adduser builder ferry \
 && usermod -p '*' builder
COPY docker/remote-sshd.conf /etc/ssh/sshd_config.d/ferry.conf
COPY docker/remote-entrypoint.sh /usr/local/bin/remote-entrypoint.sh
EXPOSE 22
ENTRYPOINT ["/usr/local/bin/remote-entrypoint.sh"]
