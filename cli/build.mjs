// Build: generate TypeScript types from proto/, compile TypeScript to dist/, compile the native
// launcher and the worker's exec helper with the machine's own C compiler (an initiator always has
// one), write the bin wrappers.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
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
const cflags = ['-O2', '-Wall', '-Wextra', '-std=c11', '-D_GNU_SOURCE'];
// The launcher execs this node for `ferry <subcommand>` and to start the coordinator.
// Linked statically where libc.a is there (libc6-dev): no dynamic loader at each of make's starts,
// ~0.15 ms less CPU per job (test/bench/launcher-cpu.mjs, best of 200: 0.81-0.83 ms against 0.96-1.00).
const launcherArgs = [...cflags, `-DFERRY_NODE="${process.execPath}"`, '-o', join('dist', 'bin', 'ferry'), join('cli', 'native', 'launcher.c')];
if (spawnSync(cc, ['-static', ...launcherArgs], { cwd: root, stdio: 'ignore' }).status !== 0) run(cc, launcherArgs);
// The worker starts its compilers through this (worker/exec-helper.ts looks for it in dist/bin).
run(cc, [...cflags, '-o', join('dist', 'bin', 'ferry-worker-exec'), join('worker', 'native', 'exec-helper.c')]);
// The coordinator loads this into cc1 to fork preprocessors from a started copy (coordinator/fork-server.ts).
mkdirSync(join(root, 'dist', 'lib'), { recursive: true });
run(cc, [...cflags, '-shared', '-fPIC', '-o', join('dist', 'lib', 'ferry-fork-server.so'), join('cli', 'native', 'fork-server.c'), '-ldl']);
const workerEntry = join(root, 'dist', 'bin', 'ferry-worker');
writeFileSync(workerEntry, "#!/usr/bin/env node\nrequire('../worker/main.js');\n");
chmodSync(workerEntry, 0o755);

// ssh2's optional native AES-GCM binding. npm ci builds it only when node-gyp can fetch Node's
// headers, which an offline machine cannot; a Node installed from a distribution package has them
// beside it (<prefix>/include/node). Without the binding Ferry works, and its coordinator spends
// about 0.5 ms more CPU per job on SSH (npm run bench, (b)); its log says which is in use.
const ssh2Crypto = join(root, 'node_modules', 'ssh2', 'lib', 'protocol', 'crypto');
const nodePrefix = dirname(dirname(process.execPath));
const nodeGyp = [
  process.env.npm_execpath && join(dirname(process.env.npm_execpath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  join(nodePrefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
].find((p) => p && existsSync(p));
if (
  existsSync(ssh2Crypto) &&
  !existsSync(join(ssh2Crypto, 'build', 'Release', 'sshcrypto.node')) &&
  existsSync(join(nodePrefix, 'include', 'node', 'node_version.h')) &&
  nodeGyp
) {
  const built = spawnSync(
    process.execPath,
    [nodeGyp, 'rebuild', `--nodedir=${nodePrefix}`, `--real_openssl_major=${process.versions.openssl.split('.')[0]}`],
    { cwd: ssh2Crypto, encoding: 'utf8' },
  );
  if (built.status !== 0) {
    const why = (built.stderr || built.error?.message || '').trim().split('\n').slice(-3).join(' / ');
    console.warn(`build: ssh2's native crypto binding could not be built (${why}); SSH will cost the coordinator more CPU`);
  }
}

