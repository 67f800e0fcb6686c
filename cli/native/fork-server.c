/*
 * ferry fork server: loaded into gcc's cc1 (LD_PRELOAD) by the coordinator, it stops the program
 * before its main() and forks a copy for each preprocessing job instead, so a job skips exec,
 * the dynamic loader and the libraries' start-up: ~1.5-2.5 ms of the ~15 ms a small `cc1 -E` costs
 * here, and most of what is left to save on the initiator once the driver is skipped.
 *
 * A forked copy is the process exec would have made, up to main(): same binary, same libraries,
 * already relocated and initialised. It then gets the job's argv, environment, working directory,
 * umask, stdout and stderr and calls the real main(). Nothing the job sets could have changed what
 * ran before main() except variables the dynamic loader and libc read at start-up (LD_*,
 * GLIBC_TUNABLES, MALLOC_*): no job whose environment has them is sent to a server
 * (proto/fork-server.ts).
 *
 * FERRY_FORK_SERVER_HEAP says what a job's heap chunks get: gcc's garbage-collected heap maps 2 MiB
 * at a time and touches it page by page, each first touch a page fault (a trap into the kernel, dear
 * in a VM: 59,000 of them in a heavy C++ compile, ~1,000 in a small `cc1 -E`).
 *   "huge-pages" (the coordinator's preprocessors): a transparent huge page each, one fault for
 *     512; ~0.9 ms of a small `cc1 -E`'s ~9.5 ms, 5 % of a big C file's, 3 % of a C++ file with a
 *     few standard headers (a heavy C++ one under -fdirectives-only varied more: median +4 %; a
 *     CMake build of leveldb the same either way). Not for compiles: a big one frees its heap
 *     chunk by chunk, and splitting huge pages made a heavy C++ compile ~9 % slower.
 *   "populate" (the worker's compiles): mapped with MAP_POPULATE, the pages made in one call; ~2 %
 *     of a heavy C++ compile, 59,000 faults down to 6,900.
 * Where THP is off, the huge-page advice does nothing.
 *
 * Two more costs of a preprocessor are cut in a job (both measured on `cc1plus -E` of a heavy C++
 * file: 34.5 ms, 4,256 readlink(2) calls, 739 write(2) calls):
 *   - realpath(3) remembers the directories it resolved. gcc canonicalizes every system header's
 *     path (-fcanonical-system-headers), glibc's realpath reads each component of the path as a
 *     link, and a job asks for hundreds of headers in a few directories (and for each, first for
 *     the name in every include directory before it). Per job only, so it sees the file system
 *     as the job does: 4,256 readlinks become 806, the run 31.6 ms; a small C file 11.0 -> 10.4 ms.
 *   - stdout gets a 64 KiB buffer: `cc1 -E` writes its output there, in the file system's block
 *     size (4 KiB on a tmpfs) otherwise.
 *
 * Without FERRY_FORK_SERVER_SOCKET in its environment the library does nothing: cc1 runs as usual.
 *
 * Started as: FERRY_FORK_SERVER_SOCKET=<socket path> LD_PRELOAD=<this .so> cc1, stdin a pipe from the
 * coordinator (its end closing stops the server), stdout a pipe that gets "ready\n" once the
 * socket listens. Per connection (cli/native/launcher.c is the client of FFS1, the worker's exec
 * helper, worker/native/exec-helper.c, of FFS2):
 *   request: SCM_RIGHTS [stdout, stderr] with the bytes "FFS1" or "FFS2", u32 length, then that many
 *            bytes: u32 umask, cwd NUL, u32 argc, argc strings NUL, u32 envc, envc strings NUL
 *            (little-endian)
 *   reply:   FFS1: i32 exit status (the exit code, or 128 + signal number), once the job's process
 *            ended; 127 at once for a request refused.
 *            FFS2: i32 pid once the job runs (-1: refused, and nothing more), then the i32 wait
 *            status of waitpid(2) once it ended. The job is in a process group of its own (its
 *            pid), which its client may kill.
 * A client that goes away first has its job's process killed.
 *
 * Built by cli/build.mjs and packaging/build-deb.mjs (the worker forks its cc1 and as from it too):
 *   cc -O2 -shared -fPIC -o dist/lib/ferry-fork-server.so fork-server.c -ldl
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_JOBS 1024
#define MAX_REQUEST (4u << 20)
#define MAX_ARGS 65536
#define HUGE_PAGE ((size_t)2 << 20)

extern char **environ;

typedef int (*main_fn)(int, char **, char **);
typedef int (*start_fn)(main_fn, int, char **, void (*)(void), void (*)(void), void (*)(void), void *);

typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);

static main_fn real_main;
static mmap_fn real_mmap;
/* Set in server mode when FERRY_FORK_SERVER_HEAP asks for one; the jobs inherit it. */
static enum { HEAP_PLAIN, HEAP_HUGE_PAGES, HEAP_POPULATE } heap_mode;
/* Set in a forked job: realpath remembers directories there only. */
static int in_job;
static const char *socket_path;

struct job {
    pid_t pid;
    int conn;   /* -1 once the client went away */
    int raw;    /* FFS2: the client gets the wait status itself */
};
static struct job jobs[MAX_JOBS];
static int job_count;

static void put_i32(int conn, int32_t value) {
    uint32_t v = (uint32_t)value;
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    /* The client waits for exactly these 4 bytes; a client that left gets EPIPE, which is fine. */
    (void)!send(conn, b, sizeof b, MSG_NOSIGNAL);
}

static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Reads exactly len bytes (the socket has a receive timeout); -1 on error, timeout or EOF. */
static int read_exact(int fd, uint8_t *p, size_t len) {
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The NUL-terminated strings at *p (count of them), into out[]; -1 when they overrun end. */
static int take_strings(char **p, const char *end, uint32_t count, char **out) {
    for (uint32_t i = 0; i < count; i++) {
        const char *nul = memchr(*p, '\0', (size_t)(end - *p));
        if (!nul) return -1;
        out[i] = *p;
        *p = (char *)nul + 1;
    }
    out[count] = NULL;
    return 0;
}

/* In the forked copy: become the job, then run cc1's own main(). Never returns. */
static _Noreturn void run_job(pid_t server, int out, int err, uint32_t mask, const char *cwd, int argc, char **argv, char **env, int own_group) {
    /* If the server dies, so does its job: its client then sees no status and says so. A server
     * killed before the prctl took effect sends no signal, hence the check of the parent after it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != server) _exit(127);
    /* Its server does the same before it tells the pid: the group is there whichever runs first. */
    if (own_group) setpgid(0, 0);
    int in = open("/dev/null", O_RDONLY);
    if (in < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(127);
    close_range(3, ~0u, 0);
    /* The server ignores SIGPIPE and blocks SIGCHLD; exec would have given the job neither. */
    for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    umask((mode_t)mask);
    if (chdir(cwd) != 0) {
        const char *why = strerror(errno);
        (void)!write(2, "ferry: fork server: cannot enter the working directory: ", 56);
        (void)!write(2, why, strlen(why));
        (void)!write(2, "\n", 1);
        _exit(127);
    }
    environ = env;
    in_job = 1;
    /* Before anything is written to it; the server itself writes no stdio. */
    setvbuf(stdout, NULL, _IOFBF, 64 << 10);
    /* What returning from main() does: exit(), which flushes stdio and runs atexit handlers. */
    exit(real_main(argc, argv, environ));
}

/* Reads one request from a new connection and starts its job; replies at once when it cannot. */
static void start_job(int conn) {
    struct timeval limit = {.tv_sec = 10};
    setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    uint8_t head[8];
    int fds[2] = {-1, -1};
    char control[CMSG_SPACE(sizeof fds)];
    struct iovec iov = {.iov_base = head, .iov_len = sizeof head};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    ssize_t n;
    do n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
    while (n < 0 && errno == EINTR);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof fds)) memcpy(fds, CMSG_DATA(c), sizeof fds);
    }
    uint8_t *body = NULL;
    char **argv = NULL, **env = NULL;
    int raw = n == (ssize_t)sizeof head && memcmp(head, "FFS2", 4) == 0;
    uint32_t len = n == (ssize_t)sizeof head && (raw || memcmp(head, "FFS1", 4) == 0) ? get_u32(head + 4) : 0;
    if (fds[0] < 0 || fds[1] < 0 || len < 16 || len > MAX_REQUEST || !(body = malloc(len + 1)) || read_exact(conn, body, len) != 0) goto refuse;
    body[len] = '\0'; /* the last string ends inside the body; this guards a body that lies */
    char *p = (char *)body + 4, *end = (char *)body + len;
    uint32_t mask = get_u32(body);
    const char *nul = memchr(p, '\0', (size_t)(end - p));
    if (!nul || end - nul < 5) goto refuse;
    const char *cwd = p;
    p = (char *)nul + 1;
    uint32_t argc = get_u32((uint8_t *)p);
    p += 4;
    if (argc == 0 || argc > MAX_ARGS || !(argv = calloc(argc + 1, sizeof *argv)) || take_strings(&p, end, argc, argv) != 0 || end - p < 4) goto refuse;
    uint32_t envc = get_u32((uint8_t *)p);
    p += 4;
    if (envc > MAX_ARGS || !(env = calloc(envc + 1, sizeof *env)) || take_strings(&p, end, envc, env) != 0) goto refuse;
    if (job_count == MAX_JOBS) goto refuse;

    pid_t server = getpid();
    pid_t pid = fork();
    if (pid == 0) run_job(server, fds[0], fds[1], mask, cwd, (int)argc, argv, env, raw);
    if (pid < 0) {
        const char *why = "ferry: fork server: cannot fork\n";
        (void)!write(fds[1], why, strlen(why));
        goto refuse;
    }
    /* The job has its own copies; ours would keep its stderr pipe open after it ends. */
    close(fds[0]);
    close(fds[1]);
    free(body);
    free(argv);
    free(env);
    jobs[job_count++] = (struct job){.pid = pid, .conn = conn, .raw = raw};
    if (raw) {
        setpgid(pid, pid);
        put_i32(conn, pid);
    }
    return;

refuse:
    /* A malformed request, or no room: the client runs the program itself. */
    put_i32(conn, raw ? -1 : 127);
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0) close(fds[i]);
    close(conn);
    free(body);
    free(argv);
    free(env);
}

/* Jobs that ended: their clients get the status. */
static void reap(void) {
    for (;;) {
        int ws;
        pid_t pid = waitpid(-1, &ws, WNOHANG);
        if (pid <= 0) return;
        for (int i = 0; i < job_count; i++) {
            if (jobs[i].pid != pid) continue;
            if (jobs[i].conn >= 0) {
                put_i32(jobs[i].conn, jobs[i].raw ? ws : WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws));
                close(jobs[i].conn);
            }
            jobs[i] = jobs[--job_count];
            break;
        }
    }
}

static int serve(void) {
    signal(SIGPIPE, SIG_IGN);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sig_fd = signalfd(-1, &chld, SFD_CLOEXEC);
    int listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (sig_fd < 0 || listen_fd < 0 || strlen(socket_path) >= sizeof addr.sun_path) return 1;
    strcpy(addr.sun_path, socket_path);
    unlink(socket_path);
    /* Only this user: the runtime directory is 0700 already, the socket is made 0600 too. */
    mode_t old = umask(077);
    int bound = bind(listen_fd, (struct sockaddr *)&addr, sizeof addr);
    umask(old);
    if (bound != 0 || listen(listen_fd, 128) != 0) return 1;
    if (write(1, "ready\n", 6) != 6) return 1;

    struct pollfd pfd[3 + MAX_JOBS];
    for (;;) {
        pfd[0] = (struct pollfd){.fd = 0, .events = POLLIN};
        pfd[1] = (struct pollfd){.fd = sig_fd, .events = POLLIN};
        /* Full: no accepting until a job ends. */
        pfd[2] = (struct pollfd){.fd = job_count < MAX_JOBS ? listen_fd : -1, .events = POLLIN};
        for (int i = 0; i < job_count; i++) pfd[3 + i] = (struct pollfd){.fd = jobs[i].conn, .events = POLLIN};
        int count = job_count;
        if (poll(pfd, 3 + (nfds_t)count, -1) < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        /* The coordinator closed our stdin (it stops, or died): stop, and the jobs with us. */
        if (pfd[0].revents) {
            char b;
            if (read(0, &b, 1) <= 0) break;
        }
        /* A client that went away (its launcher was killed) takes its job along. */
        for (int i = 0; i < count; i++) {
            if (pfd[3 + i].revents && jobs[i].conn >= 0) {
                kill(jobs[i].pid, SIGKILL);
                close(jobs[i].conn);
                jobs[i].conn = -1;
            }
        }
        if (pfd[1].revents) {
            struct signalfd_siginfo info;
            (void)!read(sig_fd, &info, sizeof info);
            reap();
        }
        if (pfd[2].revents) {
            int conn = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
            if (conn >= 0) start_job(conn);
        }
    }
    for (int i = 0; i < job_count; i++) kill(jobs[i].pid, SIGKILL);
    unlink(socket_path);
    return 0;
}

static int server_main(int argc, char **argv, char **envp) {
    (void)argc;
    (void)argv;
    (void)envp;
    _exit(serve());
}

/*
 * cc1's own mmap calls (glibc's malloc maps memory through its internal entry, not this one). A
 * mapping of whole huge pages is populated, or gets a huge-page-aligned address (kernels before 6.7
 * do not align one themselves; without alignment no huge page fits in it) and MADV_HUGEPAGE. Anything
 * else, and everything without a heap mode asked for, is the plain call.
 */
void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    /* cc1 is single-threaded; a second lookup would find the same. */
    if (!real_mmap) real_mmap = (mmap_fn)dlsym(RTLD_NEXT, "mmap");
    if (heap_mode == HEAP_PLAIN) return real_mmap(addr, len, prot, flags, fd, off);
    int anonymous = (flags & (MAP_ANONYMOUS | MAP_PRIVATE | MAP_SHARED | MAP_FIXED)) == (MAP_ANONYMOUS | MAP_PRIVATE);
    if (!anonymous || addr || len == 0 || len % HUGE_PAGE != 0) return real_mmap(addr, len, prot, flags, fd, off);
    if (heap_mode == HEAP_POPULATE) return real_mmap(NULL, len, prot, flags | MAP_POPULATE, fd, off);
    uint8_t *p = real_mmap(NULL, len, prot, flags, fd, off);
    if (p != MAP_FAILED && (uintptr_t)p % HUGE_PAGE != 0) {
        munmap(p, len);
        p = real_mmap(NULL, len + HUGE_PAGE, prot, flags, fd, off);
        if (p == MAP_FAILED) return p;
        size_t head = (HUGE_PAGE - (uintptr_t)p % HUGE_PAGE) % HUGE_PAGE;
        if (head) munmap(p, head);
        munmap(p + head + len, HUGE_PAGE - head);
        p += head;
    }
    if (p != MAP_FAILED) madvise(p, len, MADV_HUGEPAGE);
    return p;
}

typedef char *(*realpath_fn)(const char *, char *);
#define REALPATH_DIRS 512

/*
 * realpath(3) with the directories of one job's lookups remembered. `dir/base` resolves to
 * realpath(dir) + "/" + base when base is no link (readlink says EINVAL); a base that is missing is
 * ENOENT, like the real call; anything else (a link, ".", "..", no directory part, an error other
 * than ENOENT, a full table) is the real call.
 */
char *realpath(const char *path, char *resolved) {
    static realpath_fn real;
    static struct { char *dir; size_t length; char *resolved; int error; } dirs[REALPATH_DIRS];
    static int known;
    if (!real && !(real = (realpath_fn)dlsym(RTLD_NEXT, "realpath"))) {
        errno = ENOSYS;
        return NULL;
    }
    const char *slash = in_job && path ? strrchr(path, '/') : NULL;
    if (!slash || slash == path) return real(path, resolved);
    const char *base = slash + 1;
    if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) return real(path, resolved);
    size_t length = (size_t)(slash - path);
    int i = 0;
    while (i < known && !(dirs[i].length == length && memcmp(dirs[i].dir, path, length) == 0)) i++;
    if (i == known) {
        char *dir = known < REALPATH_DIRS ? strndup(path, length) : NULL;
        if (!dir) return real(path, resolved);
        errno = 0;
        char *found = real(dir, NULL);
        dirs[i].dir = dir, dirs[i].length = length, dirs[i].resolved = found, dirs[i].error = found ? 0 : errno;
        known++;
    }
    if (!dirs[i].resolved) {
        if (dirs[i].error != ENOENT) return real(path, resolved);
        errno = ENOENT;
        return NULL;
    }
    char one;
    if (readlink(path, &one, 1) >= 0) return real(path, resolved);
    if (errno == ENOENT) return NULL;
    if (errno != EINVAL) return real(path, resolved);
    const char *dir = dirs[i].resolved;
    size_t dir_length = strlen(dir), base_length = strlen(base);
    size_t sep = strcmp(dir, "/") != 0;
    if (dir_length + sep + base_length + 1 > PATH_MAX) return real(path, resolved);
    char *out = resolved ? resolved : malloc(dir_length + sep + base_length + 1);
    if (!out) return NULL;
    memcpy(out, dir, dir_length);
    if (sep) out[dir_length] = '/';
    memcpy(out + dir_length + sep, base, base_length + 1);
    return out;
}

/* glibc calls this to run main(); with FERRY_FORK_SERVER_SOCKET set, it runs the server instead. */
int __libc_start_main(main_fn main, int argc, char **argv, void (*init)(void), void (*fini)(void), void (*rtld_fini)(void), void *stack_end) {
    start_fn real_start = (start_fn)dlsym(RTLD_NEXT, "__libc_start_main");
    if (!real_start) _exit(127);
    socket_path = getenv("FERRY_FORK_SERVER_SOCKET");
    if (!socket_path || !*socket_path) return real_start(main, argc, argv, init, fini, rtld_fini, stack_end);
    real_main = main;
    const char *heap = getenv("FERRY_FORK_SERVER_HEAP");
    if (heap && strcmp(heap, "huge-pages") == 0) heap_mode = HEAP_HUGE_PAGES;
    if (heap && strcmp(heap, "populate") == 0) heap_mode = HEAP_POPULATE;
    /* Resolved here, not in the first mmap call it rewrites. */
    if (heap_mode != HEAP_PLAIN && !(real_mmap = (mmap_fn)dlsym(RTLD_NEXT, "mmap"))) _exit(127);
    /* The jobs get an environment of their own; nothing of ours should reach them. */
    socket_path = strdup(socket_path);
    unsetenv("FERRY_FORK_SERVER_SOCKET");
    unsetenv("FERRY_FORK_SERVER_HEAP");
    unsetenv("LD_PRELOAD");
    return real_start(server_main, argc, argv, init, fini, rtld_fini, stack_end);
}
