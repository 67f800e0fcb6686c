// Build: generate TypeScript types from proto/, compile TypeScript to dist/, compile the native
// launcher and the worker's exec helper with the machine's own C compiler (an initiator always has
// one), write the bin wrappers.
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const bin = (name) => join(root, 'node_modules', '.bin', name);
const run = (file, args) => execFileSync(file, args, { cwd: root, stdio: 'inherit' });

rmSync(join(root, 'proto', 'generated'), { recursive: true, force: true });
run(bin('proto-loader-gen-types'), [
  '--longs=Number', '--enums=String', '--defaults', '--oneofs', '--grpcLib=@grpc/grpc-js',
  '--includeDirs=proto', '--outDir=proto/generated', 'ferry.proto', 'launcher.proto', 'coordinator.proto',
]);
run(bin('tsc'), ['-p', 'tsconfig.json']);

mkdirSync(join(root, 'dist', 'bin'), { recursive: true });
const cc = process.env.CC || 'cc';
// The launcher execs this node for `ferry <subcommand>` and to start the coordinator.
run(cc, [
  '-O2', '-Wall', '-Wextra', '-std=c11', '-D_GNU_SOURCE',
  `-DFERRY_NODE="${process.execPath}"`,
  '-o', join('dist', 'bin', 'ferry'), join('cli', 'native', 'launcher.c'),
]);
// The worker starts its compilers through this (worker/exec-helper.ts looks for it in dist/bin).
run(cc, [
  '-O2', '-Wall', '-Wextra', '-std=c11', '-D_GNU_SOURCE',
  '-o', join('dist', 'bin', 'ferry-worker-exec'), join('worker', 'native', 'exec-helper.c'),
]);
const workerEntry = join(root, 'dist', 'bin', 'ferry-worker');
writeFileSync(workerEntry, "#!/usr/bin/env node\nrequire('../worker/main.js');\n");
chmodSync(workerEntry, 0o755);
