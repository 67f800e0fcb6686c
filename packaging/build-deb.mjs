// `npm run package`: builds dist/ferry-worker_<version>_<arch>.deb, the worker as a Debian package.
//
// The worker and the wire code are compiled afresh into a staging tree (not copied from dist/, which
// tests and other builds may be rewriting), the runtime npm packages they need are copied from this
// checkout's node_modules (what `npm ci --omit=dev` installed: same versions, no network, no install
// scripts), and the tree is packed with `dpkg-deb --root-owner-group --build`.
//
// Layout of the package:
//   /usr/bin/ferry-worker                      sh wrapper: exec /usr/bin/node …/dist/worker/main.js
//   /usr/lib/ferry-worker/{package.json,dist/worker,dist/proto,proto/*.proto,node_modules}
//   /usr/lib/ferry-worker/dist/bin/ferry-worker-exec   the worker's compiler-starting helper (C, this machine's cc)
//   /etc/ferry/worker.conf                     conffile, from worker/worker.conf
//   /lib/systemd/system/ferry-worker.service   packaging/ferry-worker.service
//   /usr/share/doc/ferry-worker/{copyright,README.Debian}
import { execFileSync } from 'node:child_process';
import {
  chmodSync, copyFileSync, cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync,
  renameSync, rmSync, statSync, writeFileSync,
} from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const here = join(root, 'packaging');
const PREFIX = 'usr/lib/ferry-worker';
/** What the worker (dist/worker, dist/proto) requires at run time; everything else is the initiator's. */
const WORKER_DEPENDENCIES = ['@grpc/grpc-js', '@grpc/proto-loader', 'grpc-health-check', 'lz4-napi', 'commander', 'protobufjs'];

const fail = (message) => {
  process.stderr.write(`build-deb: ${message}\n`);
  process.exit(1);
};
const run = (file, args, options = {}) => execFileSync(file, args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], ...options });

const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
// Debian sorts "~" before the release ("0.2.0~rc.1" < "0.2.0"), as semver sorts "-rc.1".
const version = pkg.version.replace('-', '~');
const arch = run('dpkg', ['--print-architecture']).trim();
for (const dep of WORKER_DEPENDENCIES) {
  if (!pkg.dependencies?.[dep]) fail(`${dep} is not a dependency in package.json any more; update WORKER_DEPENDENCIES`);
}
const conf = join(root, 'worker', 'worker.conf');
if (!existsSync(conf)) fail(`${relative(root, conf)} is missing: it is the package's /etc/ferry/worker.conf`);
if (!existsSync(join(root, 'proto', 'generated', 'ferry.ts'))) fail('proto/generated/ is missing: run `npm ci` or `npm run build` first');

const staging = mkdtempSync(join(tmpdir(), 'ferry-deb-'));
try {
  const tree = join(staging, `ferry-worker_${version}_${arch}`);
  const lib = join(tree, PREFIX);
  mkdirSync(lib, { recursive: true });

  // 1. The worker's JavaScript, compiled from the sources (type errors fail the package).
  run(join(root, 'node_modules', '.bin', 'tsc'), ['-p', join(here, 'tsconfig.worker.json'), '--outDir', join(lib, 'dist')], { stdio: ['ignore', 'inherit', 'inherit'] });
  // proto/generated holds only TypeScript types: its compiled modules are empty and nothing requires them.
  rmSync(join(lib, 'dist', 'proto', 'generated'), { recursive: true, force: true });
  for (const file of walk(join(lib, 'dist'))) {
    if (/require\("[^"]*generated\//.test(readFileSync(file, 'utf8'))) fail(`${relative(lib, file)} requires a generated module at run time`);
  }

  // 1b. The exec helper, where worker/exec-helper.ts looks for it (../bin from dist/worker).
  mkdirSync(join(lib, 'dist', 'bin'));
  const helper = join(lib, 'dist', 'bin', 'ferry-worker-exec');
  run(process.env.CC || 'cc', ['-O2', '-Wall', '-Wextra', '-std=c11', '-D_GNU_SOURCE', '-o', helper, join(root, 'worker', 'native', 'exec-helper.c')], { stdio: ['ignore', 'inherit', 'inherit'] });
  chmodSync(helper, 0o755);
  // 1c. The fork servers' library, where proto/fork-server.ts looks for it (../lib from dist/proto).
  mkdirSync(join(lib, 'dist', 'lib'));
  const forkServer = join(lib, 'dist', 'lib', 'ferry-fork-server.so');
  run(process.env.CC || 'cc', ['-O2', '-Wall', '-Wextra', '-std=c11', '-D_GNU_SOURCE', '-shared', '-fPIC', '-o', forkServer, join(root, 'cli', 'native', 'fork-server.c'), '-ldl'], { stdio: ['ignore', 'inherit', 'inherit'] });
  chmodSync(forkServer, 0o644);

  // 2. The .proto files, where proto/load.ts looks for them (../../proto from dist/proto).
  mkdirSync(join(lib, 'proto'));
  for (const name of readdirSync(join(root, 'proto')).filter((n) => n.endsWith('.proto'))) {
    copyFileSync(join(root, 'proto', name), join(lib, 'proto', name));
  }

  // 3. package.json: proto/version.ts reads the version from it ("name" must be "ferry").
  const dependencies = Object.fromEntries(WORKER_DEPENDENCIES.map((d) => [d, pkg.dependencies[d]]));
  writeFileSync(join(lib, 'package.json'), `${JSON.stringify({
    name: pkg.name, version: pkg.version, description: 'Ferry compile worker (Debian package)', license: pkg.license,
    private: true, type: 'commonjs', engines: pkg.engines, dependencies,
  }, null, 2)}\n`);

  // 4. Runtime node_modules: the dependency closure of WORKER_DEPENDENCIES, resolved as Node does.
  const packages = dependencyClosure(WORKER_DEPENDENCIES);
  for (const dir of packages) {
    cpSync(dir, join(lib, relative(root, dir)), {
      recursive: true,
      // Nested node_modules are copied only when they are in the closure themselves.
      filter: (src) => src === dir || !relative(dir, src).split('/').includes('node_modules') && !isDevOnlyFile(src),
    });
  }

  // 5. Entry point, configuration, unit, documentation.
  install(join(here, 'ferry-worker.sh'), join(tree, 'usr/bin/ferry-worker'), 0o755);
  install(conf, join(tree, 'etc/ferry/worker.conf'), 0o644);
  install(join(here, 'ferry-worker.service'), join(tree, 'lib/systemd/system/ferry-worker.service'), 0o644);
  install(join(here, 'deb', 'copyright'), join(tree, 'usr/share/doc/ferry-worker/copyright'), 0o644);
  install(join(here, 'deb', 'README.Debian'), join(tree, 'usr/share/doc/ferry-worker/README.Debian'), 0o644);

  // Modes as packages have them, whatever the umask or the source files' modes were.
  normaliseModes(tree);

  // 6. DEBIAN/: control (with the installed size in KiB), conffiles, maintainer scripts, md5sums.
  const debian = join(tree, 'DEBIAN');
  mkdirSync(debian, { mode: 0o755 });
  const installedKiB = Math.ceil(sizeOf(tree) / 1024);
  writeFileSync(join(debian, 'control'), readFileSync(join(here, 'deb', 'control'), 'utf8')
    .replaceAll('@VERSION@', version).replaceAll('@ARCH@', arch).replaceAll('@INSTALLED_SIZE@', String(installedKiB))
    .replaceAll('@LIBC6@', libcNeeded(helper, '2.17')), { mode: 0o644 });
  install(join(here, 'deb', 'conffiles'), join(debian, 'conffiles'), 0o644);
  for (const script of ['postinst', 'prerm', 'postrm']) install(join(here, 'deb', script), join(debian, script), 0o755);
  const sums = walk(tree).filter((f) => !f.startsWith(debian + '/') && !relative(tree, f).startsWith('etc/'))
    .map((f) => `${createHash('md5').update(readFileSync(f)).digest('hex')}  ${relative(tree, f)}`);
  writeFileSync(join(debian, 'md5sums'), `${sums.join('\n')}\n`, { mode: 0o644 });

  // 7. Pack, then move into place so a reader never sees half a .deb.
  mkdirSync(join(root, 'dist'), { recursive: true });
  const name = `ferry-worker_${version}_${arch}.deb`;
  const packed = join(staging, name);
  run('dpkg-deb', ['--root-owner-group', '-Zxz', '--build', tree, packed], { stdio: ['ignore', 'ignore', 'inherit'] });
  const target = join(root, 'dist', name);
  try {
    renameSync(packed, target);
  } catch (err) {
    if (err.code !== 'EXDEV') throw err;
    copyFileSync(packed, `${target}.tmp-${process.pid}`);
    renameSync(`${target}.tmp-${process.pid}`, target);
  }
  process.stdout.write(`${relative(process.cwd(), target) || target} (${packages.length} npm packages, ${installedKiB} KiB installed)\n`);
} finally {
  rmSync(staging, { recursive: true, force: true });
}

/**
 * The glibc the helper was linked against needs: the highest GLIBC_x.y version it names (the dynamic
 * string table lists the versions it needs), or `floor` if that is higher (what the npm binaries need).
 */
function libcNeeded(binary, floor) {
  const versions = [...readFileSync(binary).toString('latin1').matchAll(/GLIBC_(\d+(?:\.\d+)+)/g)].map((m) => m[1]);
  const key = (v) => v.split('.').map(Number);
  const newer = (a, b) => {
    const [x, y] = [key(a), key(b)];
    for (let i = 0; i < Math.max(x.length, y.length); i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) > (y[i] ?? 0);
    return false;
  };
  return versions.reduce((max, v) => (newer(v, max) ? v : max), floor);
}

function install(from, to, mode) {
  mkdirSync(dirname(to), { recursive: true });
  copyFileSync(from, to);
  chmodSync(to, mode);
}

function walk(dir) {
  const files = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) files.push(...walk(path));
    else files.push(path);
  }
  return files.sort();
}

function sizeOf(dir) {
  return walk(dir).reduce((sum, f) => sum + lstatSync(f).size, 0);
}

function normaliseModes(dir) {
  chmodSync(dir, 0o755);
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) normaliseModes(path);
    else if (entry.isFile()) chmodSync(path, statSync(path).mode & 0o111 ? 0o755 : 0o644);
  }
}

/** Files npm packages ship that nothing loads at run time: sources, type declarations, source maps. */
function isDevOnlyFile(path) {
  const name = basename(path);
  if (/^(license|licence|copying|notice)/i.test(name)) return false;
  return /\.(ts|mts|cts|map|md|markdown)$/i.test(name);
}

/**
 * Directories (under node_modules) of the packages `names` and everything they depend on, found the
 * way Node's require does: the nearest node_modules/<name> walking up from the requiring package.
 * Optional dependencies count when installed (lz4-napi's binary for this platform); @types/* are
 * declarations only (protobufjs lists @types/node as a dependency) and are left out.
 */
function dependencyClosure(names) {
  const found = new Set();
  const queue = names.map((name) => ({ name, from: root, optional: false }));
  while (queue.length > 0) {
    const { name, from, optional } = queue.shift();
    if (name.startsWith('@types/')) continue;
    const dir = resolvePackage(name, from);
    if (!dir) {
      if (optional) continue;
      fail(`${name} (needed by ${relative(root, from) || 'ferry'}) is not installed: run npm ci`);
    }
    if (found.has(dir)) continue;
    found.add(dir);
    const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
    for (const dep of Object.keys(manifest.dependencies ?? {})) queue.push({ name: dep, from: dir, optional: false });
    for (const dep of Object.keys(manifest.optionalDependencies ?? {})) queue.push({ name: dep, from: dir, optional: true });
    for (const dep of Object.keys(manifest.peerDependencies ?? {})) {
      queue.push({ name: dep, from: dir, optional: Boolean(manifest.peerDependenciesMeta?.[dep]?.optional) });
    }
  }
  return [...found].sort();
}

function resolvePackage(name, from) {
  for (let dir = from; ; dir = dirname(dir)) {
    if (basename(dir) !== 'node_modules') {
      const candidate = join(dir, 'node_modules', name);
      if (existsSync(join(candidate, 'package.json'))) return candidate;
    }
    if (dir === root || dir === dirname(dir)) return undefined;
  }
}
