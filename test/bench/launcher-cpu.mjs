// Measures the native launcher's own CPU per job (user+sys of the launcher process alone) against a
// fake coordinator that answers DONE at once, and /bin/true measured the same way for scale.
//   node test/bench/launcher-cpu.mjs [N]        (N runs each, default 50)
// The CPU comes from wait4()'s rusage of each child, taken by a small C wrapper compiled here, so
// neither Node nor the wrapper's own start-up is counted.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const runs = Number(process.argv[2] ?? 50);
if (!Number.isInteger(runs) || runs < 1) throw new Error('usage: node test/bench/launcher-cpu.mjs [N]');

const tmp = mkdtempSync(join(tmpdir(), 'ferry-bench-'));
const runtime = join(tmp, 'rt');
const cc = process.env.CC || 'cc';
const launcher = join(tmp, 'ferry');
// Linked as cli/build.mjs links it: statically where libc.a is there.
const launcherArgs = ['-O2', '-Wall', '-Wextra', '-std=c11', '-D_GNU_SOURCE', `-DFERRY_NODE="${process.execPath}"`, '-o', launcher, join(repo, 'cli', 'native', 'launcher.c')];
try {
  execFileSync(cc, ['-static', ...launcherArgs], { stdio: 'ignore' });
} catch {
  execFileSync(cc, launcherArgs);
}

// cpu-of N cmd args...: runs cmd N times one after the other (stdio to /dev/null) and prints each
// run's user+sys CPU in microseconds, one line per run.
const wrapperSrc = join(tmp, 'cpu-of.c');
writeFileSync(wrapperSrc, `
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int n = atoi(argv[1]);
  for (int i = 0; i < n; i++) {
    pid_t pid = fork();
    if (pid == 0) {
      int null = open("/dev/null", O_WRONLY);
      dup2(null, 1); dup2(null, 2);
      execvp(argv[2], argv + 2);
      _exit(127);
    }
    int status; struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) { perror("wait4"); return 1; }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { fprintf(stderr, "run %d failed: status %d\\n", i, status); return 1; }
    long us = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000L + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
    printf("%ld\\n", us);
  }
  return 0;
}
`);
const wrapper = join(tmp, 'cpu-of');
execFileSync(cc, ['-O2', '-o', wrapper, wrapperSrc]);
writeFileSync(join(tmp, 'x.c'), 'int x;\n');

// The fake coordinator: waits for a whole request frame, answers DONE (action=1, exit_code=0).
execFileSync('mkdir', ['-m', '700', runtime]);
const reply = Buffer.from([2, 0, 0, 0, 0x08, 0x01]);
let requests = 0;
const server = createServer((sock) => {
  let buf = Buffer.alloc(0);
  sock.on('error', () => {});
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    if (buf.length >= 4 && buf.length >= 4 + buf.readUInt32LE(0)) {
      requests++;
      sock.end(reply);
    }
  });
});
await new Promise((resolve) => server.listen(join(runtime, 'coordinator.sock'), resolve));

function measure(args) {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, FERRY_RUNTIME_DIR: runtime };
    delete env.FERRY_DISABLE;
    const child = spawn(wrapper, [String(runs), ...args], { cwd: tmp, env, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`${args.join(' ')}: wrapper exited with ${code}`));
      const us = out.trim().split('\n').map(Number).sort((a, b) => a - b);
      resolve({ median: us[Math.floor(us.length / 2)] / 1000, min: us[0] / 1000, max: us[us.length - 1] / 1000 });
    });
  });
}

try {
  const rows = [
    ['ferry gcc -c x.c -o x.o (DONE)', await measure([launcher, 'gcc', '-c', 'x.c', '-o', 'x.o'])],
    ['/bin/true', await measure(['/bin/true'])],
  ];
  if (requests !== runs) throw new Error(`the fake coordinator got ${requests} requests, expected ${runs}`);
  console.log(`launcher CPU per run (user+sys of that process), ${runs} runs each`);
  console.log('| command                        | median ms | min ms | max ms |');
  console.log('|--------------------------------|-----------|--------|--------|');
  for (const [name, r] of rows) {
    console.log(`| ${name.padEnd(30)} | ${r.median.toFixed(2).padStart(9)} | ${r.min.toFixed(2).padStart(6)} | ${r.max.toFixed(2).padStart(6)} |`);
  }
} finally {
  server.close();
  rmSync(tmp, { recursive: true, force: true });
}
