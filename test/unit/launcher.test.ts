/**
 * The native launcher (cli/native/launcher.c) against fake coordinators: an in-process `net` server
 * that speaks the real LaunchRequest/LaunchReply codec, and stand-alone scripts the launcher starts on
 * demand as FERRY_COORDINATOR_JS.
 */
import { execFileSync, spawn } from 'node:child_process';
import {
  chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, realpathSync,
  rmSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { loadLauncherCodec } from '../../proto/load';
import type { LaunchReply } from '../../proto/generated/ferry/launcher/v1/LaunchReply';
import type { LaunchRequest__Output } from '../../proto/generated/ferry/launcher/v1/LaunchRequest';

const repo = join(__dirname, '..', '..');
const codec = loadLauncherCodec();

let root: string; // everything this file creates
let launcher: string; // the compiled launcher, named ferry
let dir: string; // this test's scratch directory
let runtime: string; // this test's FERRY_RUNTIME_DIR
let exitingScript: string; // a "coordinator" that dies at once
let fakeDaemonScript: string; // a coordinator that listens, signals fd 3 and answers DONE
const servers: Server[] = [];
let testCount = 0;

/** Session id of this process: the launcher started from here (without setsid) shares it. */
function ownSid(): number {
  return sessionOf('self');
}
function sessionOf(pid: number | 'self'): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3]);
}

function baseEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, FERRY_RUNTIME_DIR: runtime, ...extra };
  for (const name of ['FERRY_DISABLE', 'FERRY_NODE', 'FERRY_CLI_JS', 'FERRY_COORDINATOR_JS', 'FERRY_START_TIMEOUT_MS']) {
    if (!(name in extra)) delete env[name];
  }
  return env;
}

interface Result { code: number | null; stdout: Buffer; stderr: Buffer }

/** Runs a command and resolves once it exited and its stdout/stderr reached EOF. */
function run(file: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; argv0?: string } = {}): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env: opts.env ?? baseEnv(), cwd: opts.cwd ?? dir, argv0: opts.argv0, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr: Buffer.concat(err) }));
  });
}

const ferry = (args: string[], opts: Parameters<typeof run>[2] = {}) => run(launcher, args, opts);

function frame(body: Buffer): Buffer {
  const header = Buffer.alloc(4);
  header.writeUInt32LE(body.length);
  return Buffer.concat([header, body]);
}

type Answer = LaunchReply | { raw: Buffer } | 'hangup';

/** An in-process coordinator on this test's socket: decodes each request and answers with `answer`. */
async function fakeCoordinator(answer: (req: LaunchRequest__Output) => Answer) {
  const requests: LaunchRequest__Output[] = [];
  const server = createServer((sock: Socket) => {
    let buf = Buffer.alloc(0);
    sock.on('error', () => {});
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length < 4 || buf.length < 4 + buf.readUInt32LE(0)) return;
      const req = codec.decodeRequest(buf.subarray(4, 4 + buf.readUInt32LE(0)));
      requests.push(req);
      const reply = answer(req);
      if (reply === 'hangup') sock.destroy();
      else if ('raw' in reply) sock.end(frame(reply.raw));
      else sock.end(frame(codec.encodeReply(reply)));
    });
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(join(runtime, 'coordinator.sock'), resolve));
  return { requests };
}

function fallbackLines(): string[] {
  const file = join(runtime, 'launcher-fallbacks');
  return existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean) : [];
}

function startedCoordinators(): number[] {
  const file = join(runtime, 'starts');
  return existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean).map(Number) : [];
}

const NOTICE = /^ferry: .*; compiling locally\. See .*\/coordinator\.log or run 'ferry status'\.$/m;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'ferry-launcher-'));
  launcher = join(root, 'bin', 'ferry');
  mkdirSync(dirname(launcher));
  execFileSync('cc', [
    '-O2', '-Wall', '-Wextra', '-std=c11', '-D_GNU_SOURCE', `-DFERRY_NODE="${process.execPath}"`,
    '-o', launcher, join(repo, 'cli', 'native', 'launcher.c'),
  ]);
  exitingScript = join(root, 'exiting-coordinator.js');
  writeFileSync(exitingScript, 'process.exit(1);\n');
  fakeDaemonScript = join(root, 'fake-coordinator.js');
  writeFileSync(fakeDaemonScript, `
const fs = require('fs'), net = require('net'), path = require('path');
const protobuf = require(${JSON.stringify(join(repo, 'node_modules', 'protobufjs'))});
const proto = protobuf.loadSync(${JSON.stringify(join(repo, 'proto', 'launcher.proto'))});
const Req = proto.lookupType('ferry.launcher.v1.LaunchRequest');
const Rep = proto.lookupType('ferry.launcher.v1.LaunchReply');
const dir = process.env.FERRY_RUNTIME_DIR;
fs.appendFileSync(path.join(dir, 'starts'), process.pid + '\\n');
setTimeout(() => process.exit(0), 120000).unref(); // never outlive a crashed test run by much
setTimeout(() => {
  const server = net.createServer((sock) => {
    let buf = Buffer.alloc(0);
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length < 4 || buf.length < 4 + buf.readUInt32LE(0)) return;
      const req = Req.toObject(Req.decode(buf.subarray(4, 4 + buf.readUInt32LE(0))));
      const report = { pid: process.pid, caCertsSet: 'NODE_EXTRA_CA_CERTS' in process.env, args: process.argv.slice(2), argv: req.argv };
      const body = Buffer.from(Rep.encode(Rep.fromObject({ action: 1, exitCode: 0, stdout: Buffer.from(JSON.stringify(report)) })).finish());
      const header = Buffer.alloc(4);
      header.writeUInt32LE(body.length);
      sock.end(Buffer.concat([header, body]));
    });
  });
  server.listen(path.join(dir, 'coordinator.sock'), () => {
    console.log('fake coordinator listening');
    fs.writeSync(3, 'x');
    fs.closeSync(3);
  });
  setInterval(() => {}, 1000); // stay up until the test kills us
}, Number(process.env.FAKE_LISTEN_DELAY_MS || 0));
`);
});

beforeEach(() => {
  dir = join(root, `t${++testCount}`);
  runtime = join(dir, 'rt');
  mkdirSync(runtime, { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, 'x.c'), 'int answer(void) { return 42; }\n');
});

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
  for (const pid of startedCoordinators()) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
  }
});

afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

describe('launcher ↔ coordinator', () => {
  it('sends cwd, argv, env, umask, sid, ppid and stderr_is_tty', async () => {
    const { requests } = await fakeCoordinator(() => ({ action: 'DONE', exitCode: 0 }));
    const res = await run('sh', ['-c', 'umask 027; exec "$0" "$@"', launcher, 'gcc', '-c', 'x.c', '-o', 'x.o'], {
      env: baseEnv({ FERRY_TEST_MARKER: 'marker value=with=equals' }),
    });
    expect(res.code).toBe(0);
    expect(requests).toHaveLength(1);
    const req = requests[0];
    expect(req.protocol).toBe(2);
    expect(req.cwd).toBe(realpathSync(dir));
    expect(req.argv).toEqual(['gcc', '-c', 'x.c', '-o', 'x.o']);
    expect(req.env).toContain('FERRY_TEST_MARKER=marker value=with=equals');
    expect(req.env).toContain(`FERRY_RUNTIME_DIR=${runtime}`);
    expect(req.umask).toBe(0o027);
    expect(req.stderrIsTty).toBe(false);
    expect(req.sid).toBe(ownSid());
    expect(req.ppid).toBe(process.pid); // sh exec'd the launcher, so its parent is us
  });

  it('DONE: passes stdout and stderr through byte for byte, and the exit code', async () => {
    const stdout = Buffer.from([0, 1, 2, 0, 255, 10, 0, 13, 0]);
    const stderr = Buffer.alloc(2 * 1024 * 1024);
    for (let i = 0; i < stderr.length; i++) stderr[i] = (i * 7919) & 0xff; // includes NUL bytes
    await fakeCoordinator(() => ({ action: 'DONE', exitCode: 3, stdout, stderr }));
    const res = await ferry(['gcc', '-c', 'x.c']);
    expect(res.code).toBe(3);
    expect(res.stdout.equals(stdout)).toBe(true);
    expect(res.stderr.length).toBe(stderr.length);
    expect(res.stderr.equals(stderr)).toBe(true);
  });

  it('skips reply fields it does not know, of every wire type', async () => {
    const unknown = Buffer.from([
      0xa0, 0x01, 0xac, 0x02, // field 20, varint 300
      0xa9, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, // field 21, fixed64
      0xb2, 0x01, 3, 0x61, 0x62, 0x63, // field 22, length-delimited "abc"
      0xbd, 0x01, 1, 2, 3, 4, // field 23, fixed32
      0xc3, 0x01, 0x08, 0x05, 0xcb, 0x01, 0xcc, 0x01, 0xc4, 0x01, // field 24, a group holding a varint and a group
    ]);
    const known = codec.encodeReply({ action: 'DONE', exitCode: 5, stdout: Buffer.from('out'), stderr: Buffer.from('err') });
    await fakeCoordinator(() => ({ raw: Buffer.concat([unknown, known, unknown]) }));
    const res = await ferry(['gcc', '-c', 'x.c']);
    expect(res.code).toBe(5);
    expect(res.stdout.toString()).toBe('out');
    expect(res.stderr.toString()).toBe('err');
    expect(fallbackLines()).toEqual([]);
  });

  it('RUN_LOCALLY: prints the notice and runs the compiler with the original arguments', async () => {
    const { requests } = await fakeCoordinator(() => ({ action: 'RUN_LOCALLY', notice: 'ferry: all hosts are busy' }));
    const res = await ferry(['sh', '-c', 'echo ran "$0" "$1"; exit 4', 'first', 'second arg']);
    expect(requests[0].argv).toEqual(['sh', '-c', 'echo ran "$0" "$1"; exit 4', 'first', 'second arg']);
    expect(res.code).toBe(4);
    expect(res.stdout.toString()).toBe('ran first second arg\n');
    expect(res.stderr.toString()).toBe('ferry: all hosts are busy\n');
  });

  it('falls back with coordinator-lost when the coordinator dies mid-job', async () => {
    const { requests } = await fakeCoordinator(() => 'hangup');
    const res = await ferry(['sh', '-c', 'echo local; exit 6']);
    expect(requests).toHaveLength(1);
    expect(res.code).toBe(6);
    expect(res.stdout.toString()).toBe('local\n');
    expect(res.stderr.toString()).toMatch(NOTICE);
    expect(fallbackLines()).toEqual([expect.stringMatching(new RegExp(`^\\d+ coordinator-lost ${ownSid()}$`))]);
  });

  it('falls back with coordinator-lost on a malformed reply or an unknown action', async () => {
    let n = 0;
    await fakeCoordinator(() => (n++ === 0 ? { raw: Buffer.from([0x08]) } : { raw: Buffer.from([0x08, 0x09]) }));
    for (let i = 0; i < 2; i++) {
      const res = await ferry(['sh', '-c', 'exit 7']);
      expect(res.code).toBe(7);
    }
    expect(fallbackLines().map((l) => l.split(' ')[1])).toEqual(['coordinator-lost', 'coordinator-lost']);
  });
});

describe('no coordinator', () => {
  it('compiles locally when the coordinator cannot start, telling the user once per build', async () => {
    const env = baseEnv({ FERRY_COORDINATOR_JS: exitingScript });
    const first = await ferry(['gcc', '-c', 'x.c', '-o', 'x.o'], { env });
    expect(first.code).toBe(0);
    expect(existsSync(join(dir, 'x.o'))).toBe(true);
    expect(first.stderr.toString()).toMatch(NOTICE);
    expect(first.stderr.toString()).toContain(join(runtime, 'coordinator.log'));

    rmSync(join(dir, 'x.o'));
    const second = await ferry(['gcc', '-c', 'x.c', '-o', 'x.o'], { env });
    expect(second.code).toBe(0);
    expect(existsSync(join(dir, 'x.o'))).toBe(true);
    expect(second.stderr.toString()).toBe('');

    const line = new RegExp(`^\\d+ coordinator-start-failed ${ownSid()}$`);
    expect(fallbackLines()).toEqual([expect.stringMatching(line), expect.stringMatching(line)]);
    expect(readFileSync(join(runtime, 'launcher-notice'), 'utf8').trim()).toBe(String(ownSid()));
  });

  it('tells the user again when the marker belongs to another build', async () => {
    writeFileSync(join(runtime, 'launcher-notice'), `${ownSid() + 1}\n`);
    const res = await ferry(['sh', '-c', 'exit 0'], { env: baseEnv({ FERRY_COORDINATOR_JS: exitingScript }) });
    expect(res.code).toBe(0);
    expect(res.stderr.toString()).toMatch(NOTICE);
  });

  it('gives up on a coordinator that never says it listens, after FERRY_START_TIMEOUT_MS', async () => {
    const silent = join(dir, 'silent-coordinator.js');
    writeFileSync(silent, "require('fs').appendFileSync(process.env.FERRY_RUNTIME_DIR + '/starts', process.pid + '\\n');\nsetInterval(() => {}, 1000);\n");
    const env = baseEnv({ FERRY_COORDINATOR_JS: silent, FERRY_START_TIMEOUT_MS: '300' });
    const res = await ferry(['sh', '-c', 'echo local'], { env });
    expect(res.code).toBe(0);
    expect(res.stdout.toString()).toBe('local\n');
    expect(res.stderr.toString()).toMatch(/^ferry: the coordinator did not start within 300 ms; compiling locally/);
    expect(fallbackLines().map((l) => l.split(' ')[1])).toEqual(['coordinator-start-failed']);
    expect(startedCoordinators()).toHaveLength(1); // killed in afterEach
  });

  it('falls back with coordinator-unreachable when the socket path cannot be used', async () => {
    runtime = join(dir, 'r'.repeat(120)); // too long for a sockaddr_un
    mkdirSync(runtime, { mode: 0o700 });
    const res = await ferry(['sh', '-c', 'exit 9'], { env: baseEnv({ FERRY_COORDINATOR_JS: exitingScript }) });
    expect(res.code).toBe(9);
    expect(res.stderr.toString()).toMatch(NOTICE);
    expect(fallbackLines().map((l) => l.split(' ')[1])).toEqual(['coordinator-unreachable']);
  });

  it('refuses a runtime directory writable by others, and still compiles', async () => {
    chmodSync(runtime, 0o777);
    const res = await ferry(['sh', '-c', 'echo compiled'], { env: baseEnv({ FERRY_COORDINATOR_JS: fakeDaemonScript }) });
    expect(res.code).toBe(0);
    expect(res.stdout.toString()).toBe('compiled\n');
    expect(res.stderr.toString()).toMatch(NOTICE);
    expect(readdirSync(runtime)).toEqual([]); // nothing written into it, no coordinator started
  });

  it('a gcc symlink to the launcher compiles with the real gcc, without exec-ing itself', async () => {
    const bin = join(dir, 'masq');
    mkdirSync(bin);
    symlinkSync(launcher, join(bin, 'gcc'));
    const env = baseEnv({ FERRY_COORDINATOR_JS: exitingScript, PATH: `${bin}:${process.env.PATH}` });
    const res = await run('gcc', ['-c', 'x.c', '-o', 'x.o'], { env });
    expect(res.code).toBe(0);
    expect(existsSync(join(dir, 'x.o'))).toBe(true);
    expect(fallbackLines()).toHaveLength(1); // one launcher ran, not a loop of them
  });
});

describe('starting the coordinator on demand', () => {
  it('starts it detached, with a clean environment and fds, and gets its reply', async () => {
    const env = baseEnv({ FERRY_COORDINATOR_JS: fakeDaemonScript, NODE_EXTRA_CA_CERTS: join(root, 'no-such-bundle.pem') });
    // run() resolves only once stdout and stderr reached EOF: a daemon holding them would hang this.
    const res = await ferry(['gcc', '-c', 'x.c'], { env });
    expect(res.stderr.toString()).toBe('');
    expect(res.code).toBe(0);
    const report = JSON.parse(res.stdout.toString());
    expect(report.caCertsSet).toBe(false);
    expect(report.args).toEqual(['--daemon']);
    expect(report.argv).toEqual(['gcc', '-c', 'x.c']);

    const starts = startedCoordinators();
    expect(starts).toEqual([report.pid]);
    process.kill(report.pid, 0); // still running after the launcher is gone
    expect(sessionOf(report.pid)).toBe(report.pid); // setsid(): its own session
    expect(readlinkSync(`/proc/${report.pid}/fd/0`)).toBe('/dev/null');
    expect(readlinkSync(`/proc/${report.pid}/fd/1`)).toBe(join(runtime, 'coordinator.log'));
    expect(readlinkSync(`/proc/${report.pid}/fd/2`)).toBe(join(runtime, 'coordinator.log'));
    expect(readFileSync(join(runtime, 'coordinator.log'), 'utf8')).toContain('fake coordinator listening');
    expect(fallbackLines()).toEqual([]);

    // The next job finds it running.
    const again = await ferry(['gcc', '-c', 'x.c'], { env });
    expect(JSON.parse(again.stdout.toString()).pid).toBe(report.pid);
    expect(startedCoordinators()).toHaveLength(1);
  });

  it('creates a missing runtime directory with mode 0700', async () => {
    rmSync(runtime, { recursive: true });
    const res = await ferry(['gcc', '-c', 'x.c'], { env: baseEnv({ FERRY_COORDINATOR_JS: fakeDaemonScript }) });
    expect(res.code).toBe(0);
    expect(JSON.parse(res.stdout.toString()).caCertsSet).toBe(false);
    expect(execFileSync('stat', ['-c', '%a', runtime]).toString().trim()).toBe('700');
  });

  it('eight launchers at once start exactly one coordinator', async () => {
    const env = baseEnv({ FERRY_COORDINATOR_JS: fakeDaemonScript, FAKE_LISTEN_DELAY_MS: '300' });
    const results = await Promise.all(Array.from({ length: 8 }, (_, i) => ferry(['gcc', '-c', `f${i}.c`], { env })));
    const starts = startedCoordinators();
    expect(starts).toHaveLength(1);
    for (const [i, res] of results.entries()) {
      expect(res.code).toBe(0);
      const report = JSON.parse(res.stdout.toString());
      expect(report.pid).toBe(starts[0]);
      expect(report.argv).toEqual(['gcc', '-c', `f${i}.c`]);
    }
    expect(fallbackLines()).toEqual([]);
  });

  it('masquerading as gcc, asks the coordinator with argv[0] = gcc and runs the real gcc once on RUN_LOCALLY', async () => {
    const bin = join(dir, 'masq');
    mkdirSync(bin);
    symlinkSync(launcher, join(bin, 'gcc'));
    const { requests } = await fakeCoordinator(() => ({ action: 'RUN_LOCALLY' }));
    const res = await run(join(bin, 'gcc'), ['-c', 'x.c', '-o', 'x.o'], { env: baseEnv({ PATH: `${bin}:${process.env.PATH}` }) });
    expect(res.code).toBe(0);
    expect(res.stderr.toString()).toBe('');
    expect(existsSync(join(dir, 'x.o'))).toBe(true);
    expect(requests.map((r) => r.argv)).toEqual([['gcc', '-c', 'x.c', '-o', 'x.o']]);
  });
});

describe('subcommands and FERRY_DISABLE', () => {
  let cliScript: string;
  beforeEach(() => {
    cliScript = join(dir, 'cli.js');
    writeFileSync(cliScript, "console.log(JSON.stringify({ args: process.argv.slice(2), caCertsSet: 'NODE_EXTRA_CA_CERTS' in process.env }));\n");
  });

  it('runs the TypeScript CLI for subcommands, passing the arguments through', async () => {
    const env = baseEnv({ FERRY_CLI_JS: cliScript, NODE_EXTRA_CA_CERTS: join(root, 'no-such-bundle.pem') });
    for (const args of [['status', '--json'], ['--version'], [], ['explain', 'a b', '']]) {
      const res = await ferry(args, { env });
      expect(res.stderr.toString()).toBe('');
      expect(res.code).toBe(0);
      expect(JSON.parse(res.stdout.toString())).toEqual({ args, caCertsSet: false });
    }
    expect(existsSync(join(runtime, 'coordinator.sock'))).toBe(false);
  });

  it('uses the node it was built with when FERRY_NODE is unset, and $FERRY_NODE when set', async () => {
    const viaBuilt = await ferry(['status'], { env: baseEnv({ FERRY_CLI_JS: cliScript, PATH: '/nonexistent' }) });
    expect(JSON.parse(viaBuilt.stdout.toString()).args).toEqual(['status']);
    const fakeNode = join(dir, 'fake-node');
    writeFileSync(fakeNode, '#!/bin/sh\necho "fake node $*"\n', { mode: 0o755 });
    const viaEnv = await ferry(['status'], { env: baseEnv({ FERRY_CLI_JS: cliScript, FERRY_NODE: fakeNode }) });
    expect(viaEnv.stdout.toString()).toBe(`fake node ${cliScript} status\n`);
  });

  it('FERRY_DISABLE=1 runs the compiler directly and touches nothing', async () => {
    rmSync(runtime, { recursive: true });
    const env = baseEnv({ FERRY_DISABLE: '1', FERRY_COORDINATOR_JS: fakeDaemonScript });
    const res = await ferry(['gcc', '-c', 'x.c', '-o', 'x.o'], { env });
    expect(res.code).toBe(0);
    expect(res.stderr.toString()).toBe('');
    expect(existsSync(join(dir, 'x.o'))).toBe(true);
    const missing = await ferry(['no-such-compiler-ferry'], { env });
    expect(missing.code).toBe(127);
    expect(missing.stderr.toString()).toBe('ferry: cannot run no-such-compiler-ferry: No such file or directory\n');
    expect(existsSync(runtime)).toBe(false);
  });
});
