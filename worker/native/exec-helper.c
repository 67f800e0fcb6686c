/*
 * ferry-worker-exec: starts the compilers of ferry-worker's jobs.
 *
 * Node's child_process.spawn forks the whole worker (60-150 MiB: page tables copied, then copy-on-write
 * faults in the worker), ~3 ms of the worker's CPU per job. This small process is started once by the
 * worker (worker/exec-helper.ts) and spawns each compiler with posix_spawn, which glibc implements with
 * CLONE_VFORK: no copy of anything.
 *
 * Protocol. Requests on stdin, replies on stdout, one process serves many jobs at once:
 *   request: "<id> <length>\n" followed by <length> bytes (at most 4 MiB) of NUL-terminated fields,
 *            the first of which names the request:
 *            "spawn", path, cwd, stdout file, stderr file, argc, argv[0..argc), envc, env[0..envc)
 *            (paths absolute; argc and envc in decimal);
 *            "fifo", path: a named pipe (0600) there, through which cc1 hands its assembly to as
 *            while it compiles (Node has no mkfifo);
 *            "fork", socket, then spawn's fields: the same, run by the fork server on that socket
 *            (cli/native/fork-server.c, a started copy of the program) instead of exec'd. Its
 *            replies are spawn's; a server that cannot be reached or refuses gives "unforked"
 *            (nothing runs: the worker spawns it instead), one that dies mid-job "exited <id> - 9"
 *            (its job dies with it).
 *   replies, one line each:
 *            "ready <protocol version>"        once, before any request is read
 *            "started <id> <pid>"              the compiler runs, in its own session and process group
 *                                              (forked: in its own process group)
 *            "exited <id> <code>"              it exited with that status
 *            "exited <id> - <signal number>"   a signal killed it
 *            "made <id>"                       the named pipe is there
 *            "failed <id> <errno> <message>"   it could not be started (nothing runs) or made
 *            "unforked <id> <errno> <message>" a fork request's server could not take it (nothing runs)
 * The compiler's stdin is /dev/null; its stdout and stderr go to the two files, created 0600 (never through
 * a symlink). On EOF on stdin (the worker stopped or died) this process exits at once: the compilers'
 * process groups are the worker's to kill, and init reaps what is left (a forked job's server kills it
 * when this process's connection closes).
 *
 * Built by cli/build.mjs and packaging/build-deb.mjs:
 *   cc -O2 -Wall -Wextra -std=c11 -D_GNU_SOURCE -o dist/bin/ferry-worker-exec exec-helper.c
 * libc only (glibc >= 2.29 for posix_spawn_file_actions_addchdir_np). Every fd is close-on-exec: a
 * compiler inherits 0, 1 and 2 only.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROTOCOL_VERSION 3
#define MAX_REQUEST_BYTES (4u << 20)
#define MAX_HEADER_BYTES 64
#define MAX_ID_DIGITS 20
/* Room kept for the compiler's stderr, so that "No space left on device" can still be written (and the
 * worker can tell a full disk from a bad source) when the compile fills the disk the file is on. */
#define STDERR_RESERVE_BYTES (64 * 1024)

extern char **environ;

struct child {
    pid_t pid;
    char id[MAX_ID_DIGITS + 1];
    int conn; /* a forked job: its connection to the fork server, which sends its wait status; else -1 */
};

static struct child *g_children;
static size_t g_child_count, g_child_capacity;
/* A reply to a forked job's request (its pid) that takes longer than this: the server is stuck. */
#define FORK_REPLY_TIMEOUT_S 10
static posix_spawnattr_t g_attr;

/* ---------- output ---------- */

static _Noreturn void fatal(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "ferry-worker-exec: %s\n", line);
    exit(2);
}

/* One reply line, written with one write(2) (shorter than PIPE_BUF, so never interleaved or split). */
static void reply(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0) fatal("cannot format a reply");
    if ((size_t)n > sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    for (int done = 0; done < n;) {
        ssize_t w = write(1, line + done, (size_t)(n - done));
        if (w < 0 && errno == EINTR) continue;
        /* The worker is gone: nobody is left to report to. */
        if (w < 0 && errno == EPIPE) exit(0);
        if (w < 0) fatal("cannot write a reply: %s", strerror(errno));
        done += (int)w;
    }
}

static void failed(const char *id, int err, const char *what) {
    if (what)
        reply("failed %s %d %s: %s", id, err, what, strerror(err));
    else
        reply("failed %s %d %s", id, err, strerror(err));
}

/* Only the fork server failed, not the job: the worker runs it as a spawn instead. */
static void unforked(const char *id, int err, const char *what) {
    reply("unforked %s %d %s: %s", id, err, what, strerror(err));
}

/* ---------- children ---------- */

static void remember(pid_t pid, const char *id, int conn) {
    if (g_child_count == g_child_capacity) {
        size_t capacity = g_child_capacity ? g_child_capacity * 2 : 64;
        struct child *grown = realloc(g_children, capacity * sizeof *grown);
        /* Not able to track it would mean never reporting it: the job would hang. */
        if (!grown) fatal("out of memory tracking %zu compilers", g_child_count);
        g_children = grown;
        g_child_capacity = capacity;
    }
    g_children[g_child_count].pid = pid;
    g_children[g_child_count].conn = conn;
    snprintf(g_children[g_child_count].id, sizeof g_children[g_child_count].id, "%s", id);
    g_child_count++;
}

/* Tells the worker how child i ended (a wait status) and forgets it. */
static void report_end(size_t i, int status) {
    if (WIFEXITED(status))
        reply("exited %s %d", g_children[i].id, WEXITSTATUS(status));
    else
        reply("exited %s - %d", g_children[i].id, WTERMSIG(status));
    g_children[i] = g_children[--g_child_count];
}

/* Reports every spawned child that has ended; never waits for one that runs. */
static void reap(void) {
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid < 0 && errno == EINTR) continue;
        if (pid <= 0) return; /* 0: all running; ECHILD: none */
        for (size_t i = 0; i < g_child_count; i++) {
            if (g_children[i].pid != pid || g_children[i].conn >= 0) continue;
            report_end(i, status);
            break;
        }
    }
}

/* The fork server's next little-endian i32 on `conn` (a pid, a wait status); the recv result: 4 when
 * it came, 0 at EOF, less on an error or the socket's timeout. */
static ssize_t recv_i32(int conn, int32_t *value) {
    uint8_t b[4];
    ssize_t n;
    do n = recv(conn, b, sizeof b, MSG_WAITALL);
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof b) *value = (int32_t)((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24);
    return n;
}

/* A forked job's connection is readable: its wait status, or the server went away (and the job with
 * it, by its parent-death signal). */
static void forked_ended(size_t i) {
    int32_t status;
    if (recv_i32(g_children[i].conn, &status) != (ssize_t)sizeof status) status = SIGKILL;
    close(g_children[i].conn);
    report_end(i, status);
}

/* ---------- one request ---------- */

/* The next NUL-terminated field of [*at, end), or NULL when there is none. */
static char *next_field(char **at, char *end) {
    char *start = *at;
    char *nul = start < end ? memchr(start, '\0', (size_t)(end - start)) : NULL;
    if (!nul) return NULL;
    *at = nul + 1;
    return start;
}

/* A count field: decimal, at most `max`; -1 when it is not one. */
static long count_field(const char *text, long max) {
    if (!text || !*text || strlen(text) > 9) return -1;
    long value = 0;
    for (const char *p = text; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        value = value * 10 + (*p - '0');
    }
    return value <= max ? value : -1;
}

/* Parses `count` fields into a NULL-terminated array; returns NULL when they are not all there. */
static char **string_array(char **at, char *end, long count) {
    char **array = calloc((size_t)count + 1, sizeof *array);
    if (!array) return NULL;
    for (long i = 0; i < count; i++) {
        array[i] = next_field(at, end);
        if (!array[i]) {
            free(array);
            return NULL;
        }
    }
    return array;
}

static int create_capture(const char *path) {
    return open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
}

/* The compiler's stdout and stderr files; -1 (and the failure told) when one cannot be made. */
static int open_captures(const char *id, const char *out_path, const char *err_path, int *out, int *err) {
    *out = create_capture(out_path);
    if (*out < 0) {
        failed(id, errno, "cannot create the stdout file");
        return -1;
    }
    *err = create_capture(err_path);
    if (*err < 0) {
        failed(id, errno, "cannot create the stderr file");
        close(*out);
        return -1;
    }
    /* Best effort: a file system without fallocate, or one already full, gets no reserve. */
    (void)fallocate(*err, FALLOC_FL_KEEP_SIZE, 0, STDERR_RESERVE_BYTES);
    return 0;
}

static void spawn_compiler(const char *id, const char *path, const char *cwd, const char *out_path,
                           const char *err_path, char **argv, char **envp) {
    int out, err;
    if (open_captures(id, out_path, err_path, &out, &err) != 0) return;

    posix_spawn_file_actions_t actions;
    int rc = posix_spawn_file_actions_init(&actions);
    if (rc == 0) rc = posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    /* out and err are above 2 (0-2 are always open here), so dup2 gives fresh fds without FD_CLOEXEC. */
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&actions, out, 1);
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&actions, err, 2);
    if (rc == 0) rc = posix_spawn_file_actions_addchdir_np(&actions, cwd);
    pid_t pid = -1;
    /* glibc reports a failed chdir or exec in the child as posix_spawn's result, and reaps that child. */
    if (rc == 0) rc = posix_spawn(&pid, path, &actions, &g_attr, argv, envp);
    posix_spawn_file_actions_destroy(&actions);
    close(out);
    close(err);
    if (rc != 0) {
        failed(id, rc, NULL);
        return;
    }
    remember(pid, id, -1);
    reply("started %s %d", id, (int)pid);
}

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
}

/* The FFS2 request for a job (fork-server.c's format); NULL when it does not fit in memory. */
static uint8_t *fork_request(const char *cwd, char **argv, char **envp, size_t *length) {
    size_t size = 8 + 4 + strlen(cwd) + 1 + 4 + 4;
    uint32_t argc = 0, envc = 0;
    for (; argv[argc]; argc++) size += strlen(argv[argc]) + 1;
    for (; envp[envc]; envc++) size += strlen(envp[envc]) + 1;
    uint8_t *message = malloc(size), *p = message;
    if (!message) return NULL;
    mode_t mask = umask(0);
    umask(mask);
    memcpy(p, "FFS2", 4), put_u32(p + 4, (uint32_t)(size - 8)), p += 8;
    put_u32(p, (uint32_t)mask), p += 4;
    p = (uint8_t *)stpcpy((char *)p, cwd) + 1;
    put_u32(p, argc), p += 4;
    for (uint32_t i = 0; i < argc; i++) p = (uint8_t *)stpcpy((char *)p, argv[i]) + 1;
    put_u32(p, envc), p += 4;
    for (uint32_t i = 0; i < envc; i++) p = (uint8_t *)stpcpy((char *)p, envp[i]) + 1;
    *length = size;
    return message;
}

/* Hands the job to the fork server on `socket_path`; its pid comes back at once, its status later. */
static void fork_compiler(const char *id, const char *socket_path, const char *cwd, const char *out_path,
                          const char *err_path, char **argv, char **envp) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(socket_path) >= sizeof addr.sun_path) {
        unforked(id, ENAMETOOLONG, "the fork server's socket path is too long");
        return;
    }
    strcpy(addr.sun_path, socket_path);
    size_t length;
    uint8_t *message = fork_request(cwd, argv, envp, &length);
    if (!message) {
        unforked(id, ENOMEM, "cannot hold the fork server's request");
        return;
    }
    int out = -1, err = -1, conn = -1;
    const char *what = NULL;
    int error = 0;
    if (open_captures(id, out_path, err_path, &out, &err) != 0) goto done;
    conn = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval limit = {.tv_sec = FORK_REPLY_TIMEOUT_S};
    if (conn < 0 || setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit) != 0 ||
        connect(conn, (struct sockaddr *)&addr, sizeof addr) != 0) {
        error = errno, what = "cannot reach the fork server";
        goto done;
    }
    int fds[2] = {out, err};
    char control[CMSG_SPACE(sizeof fds)];
    memset(control, 0, sizeof control);
    struct iovec iov = {.iov_base = message, .iov_len = length};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET, c->cmsg_type = SCM_RIGHTS, c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    /* The first sendmsg carries the descriptors; a long request's rest follows with send. */
    ssize_t n;
    do n = sendmsg(conn, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    for (size_t sent = n > 0 ? (size_t)n : 0; n > 0 && sent < length; sent += (size_t)n) {
        do n = send(conn, message + sent, length - sent, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
    }
    if (n <= 0) {
        error = n < 0 ? errno : EPIPE, what = "cannot send the job to the fork server";
        goto done;
    }
    int32_t pid = -1;
    n = recv_i32(conn, &pid);
    if (pid <= 0) {
        error = n < 0 ? errno : EPROTO, what = n == (ssize_t)sizeof pid ? "the fork server refused the job" : "no answer from the fork server";
        goto done;
    }
    remember(pid, id, conn);
    conn = -1;
    reply("started %s %d", id, (int)pid);
done:
    if (what) unforked(id, error, what);
    if (conn >= 0) close(conn);
    if (out >= 0) close(out);
    if (err >= 0) close(err);
    free(message);
}

/* A job directory is emptied between jobs, but a named pipe left there is as good as a new one. */
static void make_fifo(const char *id, const char *path) {
    struct stat info;
    if (mkfifo(path, 0600) == 0 || (errno == EEXIST && lstat(path, &info) == 0 && S_ISFIFO(info.st_mode)))
        reply("made %s", id);
    else
        failed(id, errno, "cannot make the named pipe");
}

static void handle_request(const char *id, char *body, size_t length) {
    char *at = body, *end = body + length;
    char *kind = next_field(&at, end);
    if (kind && strcmp(kind, "fifo") == 0) {
        char *fifo = next_field(&at, end);
        if (!fifo || fifo[0] != '/' || at != end)
            reply("failed %s %d malformed request (expected fifo, absolute path)", id, EINVAL);
        else
            make_fifo(id, fifo);
        return;
    }
    int forked = kind && strcmp(kind, "fork") == 0;
    if (!kind || (!forked && strcmp(kind, "spawn") != 0)) {
        reply("failed %s %d malformed request (its first field must be spawn, fork or fifo)", id, EINVAL);
        return;
    }
    char *socket_path = forked ? next_field(&at, end) : "";
    char *path = next_field(&at, end);
    char *cwd = next_field(&at, end);
    char *out_path = next_field(&at, end);
    char *err_path = next_field(&at, end);
    long argc = count_field(next_field(&at, end), MAX_REQUEST_BYTES / 2);
    char **argv = argc >= 1 ? string_array(&at, end, argc) : NULL;
    long envc = argv ? count_field(next_field(&at, end), MAX_REQUEST_BYTES / 2) : -1;
    char **envp = envc >= 0 ? string_array(&at, end, envc) : NULL;
    if (!socket_path || !path || !cwd || !out_path || !err_path || !argv || !envp || at != end) {
        reply("failed %s %d malformed request (expected spawn or fork and its socket, path, cwd, stdout, stderr, argc, argv, envc, env)", id, EINVAL);
    } else if (forked) {
        fork_compiler(id, socket_path, cwd, out_path, err_path, argv, envp);
    } else {
        spawn_compiler(id, path, cwd, out_path, err_path, argv, envp);
    }
    free(argv);
    free(envp);
}

/* ---------- the request stream ---------- */

static enum { READ_HEADER, READ_BODY, SKIP_BODY } g_state = READ_HEADER;
static char g_header[MAX_HEADER_BYTES + 1];
static size_t g_header_length;
static char g_id[MAX_ID_DIGITS + 1];
static char *g_body;
static size_t g_body_length, g_body_received;

/* "<id> <length>": a framing error cannot be recovered from (where would the next request start?). */
static void parse_header(void) {
    g_header[g_header_length] = '\0';
    char *space = strchr(g_header, ' ');
    size_t id_length = space ? (size_t)(space - g_header) : 0;
    if (id_length == 0 || id_length > MAX_ID_DIGITS || strspn(g_header, "0123456789") != id_length)
        fatal("malformed request header \"%s\"", g_header);
    const char *length_text = space + 1;
    if (!*length_text || strlen(length_text) > 10 || strspn(length_text, "0123456789") != strlen(length_text))
        fatal("malformed request header \"%s\"", g_header);
    memcpy(g_id, g_header, id_length);
    g_id[id_length] = '\0';
    unsigned long long length = strtoull(length_text, NULL, 10);
    g_header_length = 0;
    g_body_received = 0;
    g_body_length = (size_t)length;
    if (length > MAX_REQUEST_BYTES) {
        reply("failed %s %d request of %llu bytes is over the limit of %u bytes", g_id, E2BIG, length, MAX_REQUEST_BYTES);
        g_state = SKIP_BODY;
        return;
    }
    g_body = malloc(g_body_length + 1);
    if (!g_body) {
        failed(g_id, ENOMEM, "cannot hold the request");
        g_state = SKIP_BODY;
        return;
    }
    g_state = READ_BODY;
    if (g_body_length == 0) {
        handle_request(g_id, g_body, 0);
        free(g_body);
        g_body = NULL;
        g_state = READ_HEADER;
    }
}

static void consume(const char *data, size_t size) {
    while (size > 0) {
        if (g_state == READ_HEADER) {
            char c = *data++;
            size--;
            if (c == '\n')
                parse_header();
            else if (g_header_length == MAX_HEADER_BYTES)
                fatal("request header longer than %d bytes", MAX_HEADER_BYTES);
            else
                g_header[g_header_length++] = c;
            continue;
        }
        size_t take = g_body_length - g_body_received;
        if (take > size) take = size;
        if (g_state == READ_BODY) memcpy(g_body + g_body_received, data, take);
        g_body_received += take;
        data += take;
        size -= take;
        if (g_body_received < g_body_length) continue;
        if (g_state == READ_BODY) {
            handle_request(g_id, g_body, g_body_length);
            free(g_body);
            g_body = NULL;
        }
        g_state = READ_HEADER;
    }
}

/* ---------- setup ---------- */

/* 0-2 open (a closed one would be reused by open(2) and then survive in the compiler), everything
 * else the worker might have leaked closed, all of them close-on-exec. */
static void tidy_fds(void) {
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd)
            fatal("cannot open /dev/null as fd %d", fd);
        if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) fatal("cannot set close-on-exec on fd %d: %s", fd, strerror(errno));
    }
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3u, ~0u, 0u) == 0) return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    for (long fd = 3; fd < (max > 0 && max < 65536 ? max : 65536); fd++) close((int)fd);
}

/* Compilers start with an empty signal mask and default dispositions, whatever this process uses. */
static void init_spawn_attributes(void) {
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    const int ours[] = {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT};
    for (size_t i = 0; i < sizeof ours / sizeof ours[0]; i++) sigaddset(&defaults, ours[i]);
    int rc = posix_spawnattr_init(&g_attr);
    /* SETSID: a new session and process group (the pid), as Node's `detached: true` gave it; the
     * worker kills the group, so cc1 and as go with the driver. */
    if (rc == 0) rc = posix_spawnattr_setflags(&g_attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    if (rc == 0) rc = posix_spawnattr_setsigmask(&g_attr, &none);
    if (rc == 0) rc = posix_spawnattr_setsigdefault(&g_attr, &defaults);
    if (rc != 0) fatal("cannot set up posix_spawn: %s", strerror(rc));
}

int main(void) {
    tidy_fds();
    /* Its life is the worker's: it ends at EOF on stdin, not on the terminal's or a service manager's
     * signals meant for the worker (which stops gracefully, letting running compiles finish). */
    const int ignored[] = {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT};
    for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++) signal(ignored[i], SIG_IGN);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &chld, NULL) != 0) fatal("cannot block SIGCHLD: %s", strerror(errno));
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) fatal("cannot create a signalfd: %s", strerror(errno));
    init_spawn_attributes();
    reply("ready %d", PROTOCOL_VERSION);

    static char buffer[64 * 1024];
    struct pollfd *fds = NULL;
    size_t fds_capacity = 0;
    for (;;) {
        /* stdin, the signalfd, then the connection of each forked job (in g_children's order). */
        if (fds_capacity < 2 + g_child_count) {
            fds_capacity = 2 + g_child_capacity;
            if (!(fds = realloc(fds, fds_capacity * sizeof *fds))) fatal("out of memory polling %zu compilers", g_child_count);
        }
        fds[0] = (struct pollfd){.fd = 0, .events = POLLIN};
        fds[1] = (struct pollfd){.fd = sfd, .events = POLLIN};
        nfds_t count = 2;
        size_t watched[g_child_count + 1];
        for (size_t i = 0; i < g_child_count; i++) {
            if (g_children[i].conn < 0) continue;
            watched[count - 2] = i;
            fds[count++] = (struct pollfd){.fd = g_children[i].conn, .events = POLLIN};
        }
        if (poll(fds, count, -1) < 0) {
            if (errno == EINTR) continue;
            fatal("poll: %s", strerror(errno));
        }
        /* From the last: report_end moves the last child into the slot it frees. */
        for (nfds_t k = count; k-- > 2;) {
            if (fds[k].revents) forked_ended(watched[k - 2]);
        }
        if (fds[1].revents & POLLIN) {
            struct signalfd_siginfo info;
            while (read(sfd, &info, sizeof info) > 0) continue;
            reap();
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read(0, buffer, sizeof buffer);
            if (n == 0) exit(0);
            if (n < 0) {
                if (errno == EINTR || errno == EAGAIN) continue;
                fatal("cannot read requests: %s", strerror(errno));
            }
            consume(buffer, (size_t)n);
        }
    }
}
