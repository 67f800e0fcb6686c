#!/bin/sh
# /usr/bin/ferry-worker: runs the packaged worker with the system's Node.js (Debian's nodejs >= 18).
exec /usr/bin/node /usr/lib/ferry-worker/dist/worker/main.js "$@"
