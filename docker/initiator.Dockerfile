# syntax=docker/dockerfile:1
# A Ferry initiator: Node, gcc, make, ccache, and ferry installed with npm as the README says
# (`npm ci && npm install -g .`). Build context: the repository.
FROM node:20-bookworm
# gcc-12/g++-12 are named so they are brought up to the Debian point release the remotes install:
# Ferry sends a job only to a remote whose compiler reports the same version.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc-12 g++-12 gcc g++ libc6-dev make ccache openssh-client \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ferry
COPY . .
RUN npm ci --no-audit --no-fund && npm install -g . && ferry --version
COPY docker/run-cluster-build.sh /usr/local/bin/run-cluster-build.sh
WORKDIR /root
CMD ["run-cluster-build.sh"]
