/*
 * ferry launcher: the process make/ninja/ccache start once per compile (`ferry gcc -c a.c -o a.o`).
 *
 * Node costs ~18-45 ms of CPU per start, a C Unix-socket round trip ~0.6 ms, so the per-job hot path is
 * this small C client. It makes no decisions: it ships the job (argv, cwd, env, umask, ...) to the
 * long-lived coordinator daemon (coordinator/) as one LaunchRequest frame (proto/launcher.proto, encoded
 * by hand) and does what the LaunchReply says. Whenever the coordinator cannot be used it compiles
 * locally, so a broken ferry never breaks a build.
 *
 * Built at install time by cli/build.mjs:
 *   cc -O2 -Wall -Wextra -std=c11 -D_GNU_SOURCE -DFERRY_NODE="/path/to/node" -o dist/bin/ferry launcher.c
 * libc only. Every fd opened here is O_CLOEXEC so nothing leaks into the compiler or the daemon.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROTOCOL_VERSION 2
#define ACTION_DONE 1
#define ACTION_RUN_LOCALLY 2
#define ACTION_PREPROCESS 3
#define MAX_PREPROCESS_ARGS 4096
#define MAX_PREPROCESS_STDERR (16u << 20)
/* A reply bigger than this is garbage, not a compiler's output: don't try to allocate it. */
#define MAX_REPLY_BYTES (1u << 30)
#define NOTICE_QUIET_SECONDS 60
#define DEFAULT_START_TIMEOUT_MS 10000

extern char **environ;

static const char *const subcommands[] = {
    "help", "status", "stats", "stop", "explain", "monitor", "hosts",
    "jobs", "coordinator", "demo", "version",
};

static char g_dir[PATH_MAX];        /* runtime directory, as coordinator/paths.ts computes it */
static char g_sock[PATH_MAX];       /* <dir>/coordinator.sock */
static char g_what[PATH_MAX + 256]; /* what went wrong, for the fallback notice */
static const char *g_compiler;      /* the compiler as the user named it */
static char **g_cargv;              /* its argv; [0] is replaced by the resolved path at exec */

/* ---------- small helpers ---------- */

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Writes everything: pipes take partial writes, signals interrupt, and a stdout someone else made
 * non-blocking answers EAGAIN; then we wait for room instead of losing compiler output. */
static int write_all(int fd, const void *data, size_t len) {
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && errno == EAGAIN) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            if (poll(&pfd, 1, -1) < 0 && errno != EINTR) return -1;
        } else if (n < 0 && errno != EINTR) {
            return -1;
        }
    }
    return 0;
}

/* Reads exactly len bytes; -1 on error or on EOF before the end (a coordinator that went away). */
static int read_all(int fd, void *data, size_t len) {
    char *p = data;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n == 0 || errno != EINTR) {
            return -1;
        }
    }
    return 0;
}

/* <dist> = dirname(dirname(realpath(/proc/self/exe))): the binary is installed as <dist>/bin/ferry. */
static void dist_dir(char out[PATH_MAX]) {
    if (!realpath("/proc/self/exe", out)) strcpy(out, "/nonexistent/bin/ferry");
    for (int i = 0; i < 2; i++) {
        char *slash = strrchr(out, '/');
        if (slash && slash != out) *slash = '\0';
        else strcpy(out, "/");
    }
}

/* test/bench/run.mjs starts its coordinator with the same flag. */
#define COORDINATOR_HEAP_FLAG "--initial-old-space-size=64"

/* Execs node with argv[1..] (argv[0] is filled in here). Node parses the whole CA bundle at every
 * start when NODE_EXTRA_CA_CERTS is set (+27 ms here), and none of our node processes needs it. */
static void exec_node(char **argv) {
    unsetenv("NODE_EXTRA_CA_CERTS");
    const char *node = getenv("FERRY_NODE");
    if (node && *node) {
        argv[0] = (char *)node;
        execvp(node, argv);
        return;
    }
#ifdef FERRY_NODE
    argv[0] = (char *)FERRY_NODE;
    execv(FERRY_NODE, argv);
    /* The node we were built with is gone (upgraded?): try whichever node is on PATH. */
#endif
    argv[0] = "node";
    execvp("node", argv);
}

/* A script of this installation (<dist>/<relative>), or the one the environment variable names (tests). */
static void node_script(char *out, size_t size, const char *env_var, const char *relative) {
    const char *js = getenv(env_var);
    if (js && *js) {
        snprintf(out, size, "%s", js);
    } else {
        char dist[PATH_MAX];
        dist_dir(dist);
        snprintf(out, size, "%s/%s", dist, relative);
    }
}

/* `ferry status`, `ferry --help`...: the TypeScript CLI handles everything but compiles. */
static _Noreturn void exec_cli(int argc, char **argv) {
    char script[PATH_MAX + 32];
    node_script(script, sizeof script, "FERRY_CLI_JS", "cli/main.js");
    char **nargv = calloc((size_t)(argc < 1 ? 1 : argc) + 2, sizeof *nargv);
    if (!nargv) {
        perror("ferry");
        exit(127);
    }
    nargv[1] = script;
    for (int i = 1; i < argc; i++) nargv[i + 1] = argv[i];
    exec_node(nargv);
    fprintf(stderr, "ferry: cannot run node: %s\n", strerror(errno));
    exit(127);
}

/* Execs the real compiler with the original arguments. A bare name is looked up in PATH, skipping the
 * launcher itself: with a `gcc -> ferry` symlink first on PATH (ccache style), execvp would exec us
 * again, forever. */
static _Noreturn void exec_compiler(void) {
    const char *name = g_compiler;
    int err = ENOENT;
    if (strchr(name, '/')) {
        g_cargv[0] = (char *)name;
        execv(name, g_cargv);
        err = errno;
    } else if (*name) {
        struct stat self;
        int have_self = stat("/proc/self/exe", &self) == 0;
        const char *path = getenv("PATH");
        if (!path) path = "/bin:/usr/bin"; /* glibc's execvp default */
        size_t name_len = strlen(name);
        char cand[PATH_MAX];
        int saw_eacces = 0;
        for (const char *p = path;; p++) {
            const char *end = strchrnul(p, ':');
            size_t dir_len = (size_t)(end - p);
            const char *dir = dir_len ? p : "."; /* an empty PATH entry means the current directory */
            if (!dir_len) dir_len = 1;
            if (dir_len + 1 + name_len < sizeof cand) {
                memcpy(cand, dir, dir_len);
                cand[dir_len] = '/';
                memcpy(cand + dir_len + 1, name, name_len + 1);
                struct stat st;
                if (stat(cand, &st) == 0 && S_ISREG(st.st_mode) &&
                    !(have_self && st.st_dev == self.st_dev && st.st_ino == self.st_ino)) {
                    g_cargv[0] = cand;
                    execv(cand, g_cargv);
                    if (errno == EACCES) saw_eacces = 1;
                    else err = errno;
                }
            }
            if (!*end) break;
            p = end;
        }
        if (saw_eacces) err = EACCES;
    }
    fprintf(stderr, "ferry: cannot run %s: %s\n", name, strerror(err));
    exit(127);
}

/* ---------- the runtime directory ---------- */

/* FERRY_RUNTIME_DIR, else $XDG_RUNTIME_DIR/ferry, else /tmp/ferry-<uid>: keep in step with
 * coordinator/paths.ts. Returns -1 when the socket path would not fit a sockaddr_un. */
static int runtime_paths(void) {
    const char *d = getenv("FERRY_RUNTIME_DIR");
    int n;
    if (d && *d) n = snprintf(g_dir, sizeof g_dir, "%s", d);
    else if ((d = getenv("XDG_RUNTIME_DIR")) && *d) n = snprintf(g_dir, sizeof g_dir, "%s/ferry", d);
    else n = snprintf(g_dir, sizeof g_dir, "/tmp/ferry-%u", (unsigned)getuid());
    if (n < 0 || (size_t)n >= sizeof g_dir) {
        g_dir[0] = '\0';
        return -1;
    }
    n = snprintf(g_sock, sizeof g_sock, "%s/coordinator.sock", g_dir);
    return n > 0 && (size_t)n < sizeof(((struct sockaddr_un *)0)->sun_path) ? 0 : -1;
}

/* 0: usable; 1: missing; -1: not ours or writable by others. The socket and every file in it are
 * trusted, and the request carries the whole environment: in a predictable /tmp/ferry-<uid> someone
 * else could have made, it would go to their listener. */
static int check_dir(void) {
    struct stat st;
    if (stat(g_dir, &st) != 0) return errno == ENOENT ? 1 : -1;
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022)) return -1;
    return 0;
}

static int make_dir(void) {
    if (mkdir(g_dir, 0700) == 0 || errno == EEXIST) return 0;
    if (errno != ENOENT) return -1;
    /* Parents missing (a fresh FERRY_RUNTIME_DIR): create them too, like the coordinator would. */
    char p[PATH_MAX];
    strcpy(p, g_dir);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST) return -1;
        *s = '/';
    }
    return mkdir(p, 0700) == 0 || errno == EEXIST ? 0 : -1;
}

/* ---------- falling back to a local compile ---------- */

/* Tells the user once per build, not once per job: the marker holds the sid of the last notice, and
 * every fallback refreshes it. Locked so parallel jobs of one build don't all decide to print. */
static int notice_already_given(pid_t sid) {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/launcher-notice", g_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
    if (fd < 0) return 0;
    while (flock(fd, LOCK_EX) != 0 && errno == EINTR) {
    }
    int quiet = 0;
    char buf[32];
    struct stat st;
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n > 0 && fstat(fd, &st) == 0) {
        buf[n] = '\0';
        char *end;
        long last = strtol(buf, &end, 10);
        time_t age = time(NULL) - st.st_mtime;
        quiet = end != buf && last == (long)sid && age >= 0 && age < NOTICE_QUIET_SECONDS;
    }
    int len = snprintf(buf, sizeof buf, "%d\n", (int)sid);
    if (pwrite(fd, buf, (size_t)len, 0) == len && ftruncate(fd, len) != 0) {
        /* a stale tail after the sid only costs an extra notice */
    }
    close(fd); /* releases the lock */
    return quiet;
}

/* Compiles locally. Records the fallback (the coordinator counts them in its statistics), tells the
 * user once per build, then execs the compiler. */
static _Noreturn void fall_back(const char *reason) {
    pid_t sid = getsid(0);
    int quiet = 0;
    if (check_dir() == 0) { /* never write into a directory we don't trust */
        char path[PATH_MAX + 32], line[128];
        snprintf(path, sizeof path, "%s/launcher-fallbacks", g_dir);
        int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
        if (fd >= 0) {
            /* One write() on an O_APPEND fd: lines from parallel jobs never interleave. */
            int len = snprintf(line, sizeof line, "%lld %s %d\n", (long long)time(NULL), reason, (int)sid);
            if (write(fd, line, (size_t)len) != len) {
                /* statistics only: the compile matters more */
            }
            close(fd);
        }
        quiet = notice_already_given(sid);
    }
    if (!quiet) {
        fprintf(stderr, "ferry: %s; compiling locally. See %s/coordinator.log or run 'ferry status'.\n",
                g_what, g_dir);
        fflush(stderr);
    }
    exec_compiler();
}

/* ---------- talking to the coordinator ---------- */

/* Returns a connected fd, or -1 with errno set. */
static int try_connect(void) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strcpy(addr.sun_path, g_sock); /* length checked by runtime_paths() */
    while (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (errno == EINTR) continue; /* bounded: only a signal gets us here again */
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

static size_t varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v) {
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Length-delimited field: tag, length, bytes. All our field numbers fit a one-byte tag. */
static uint8_t *put_bytes(uint8_t *p, unsigned field, const char *s, size_t len) {
    *p++ = (uint8_t)(field << 3 | 2);
    p = put_varint(p, len);
    memcpy(p, s, len);
    return p + len;
}

static size_t bytes_len(size_t len) { return 1 + varint_len(len) + len; }

/* int32 fields: proto3 sign-extends negatives to ten bytes. */
static uint64_t int32_wire(int32_t v) { return (uint64_t)(int64_t)v; }

/* Builds the framed LaunchRequest (uint32 LE length + message) in one buffer: one send(). */
static uint8_t *encode_request(const char *cwd, size_t *out_len) {
    mode_t mask = umask(0); /* the only way to read it; put it back at once */
    umask(mask);
    int32_t sid = (int32_t)getsid(0), ppid = (int32_t)getppid();
    int tty = isatty(2);
    size_t cwd_len = strlen(cwd);

    size_t body = 2 + bytes_len(cwd_len);              /* protocol, cwd */
    body += bytes_len(strlen(g_compiler));             /* argv[0] as named */
    for (char **a = g_cargv + 1; *a; a++) body += bytes_len(strlen(*a));
    for (char **e = environ; *e; e++) body += bytes_len(strlen(*e));
    body += 1 + varint_len(mask) + 1 + varint_len(int32_wire(sid)) + 1 + varint_len(int32_wire(ppid)) + 2;
    if (body > UINT32_MAX) return NULL;

    uint8_t *buf = malloc(4 + body);
    if (!buf) return NULL;
    uint8_t *p = buf;
    for (int i = 0; i < 4; i++) *p++ = (uint8_t)(body >> (8 * i));
    *p++ = 1 << 3 | 0; /* protocol */
    *p++ = PROTOCOL_VERSION;
    p = put_bytes(p, 2, cwd, cwd_len);
    p = put_bytes(p, 3, g_compiler, strlen(g_compiler));
    for (char **a = g_cargv + 1; *a; a++) p = put_bytes(p, 3, *a, strlen(*a));
    for (char **e = environ; *e; e++) p = put_bytes(p, 4, *e, strlen(*e));
    *p++ = 5 << 3 | 0;
    p = put_varint(p, mask);
    *p++ = 6 << 3 | 0;
    p = put_varint(p, int32_wire(sid));
    *p++ = 7 << 3 | 0;
    p = put_varint(p, int32_wire(ppid));
    *p++ = 8 << 3 | 0;
    *p++ = tty ? 1 : 0;
    *out_len = (size_t)(p - buf);
    return buf;
}

static int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    uint64_t r = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) { /* at most ten bytes */
        if (*p >= end) return -1;
        uint8_t b = *(*p)++;
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return 0;
        }
    }
    return -1;
}

/* Skips one field of any wire type, so a newer coordinator may add fields. Groups (deprecated, but
 * valid wire format) nest; depth is capped so garbage cannot exhaust the stack. */
static int skip_field(const uint8_t **p, const uint8_t *end, unsigned wire, uint64_t field, int depth) {
    uint64_t v;
    switch (wire) {
    case 0:
        return get_varint(p, end, &v);
    case 1:
    case 5: {
        size_t n = wire == 1 ? 8 : 4;
        if ((size_t)(end - *p) < n) return -1;
        *p += n;
        return 0;
    }
    case 2:
        if (get_varint(p, end, &v) != 0 || v > (uint64_t)(end - *p)) return -1;
        *p += v;
        return 0;
    case 3:
        if (depth > 32) return -1;
        while (*p < end) { /* bounded: every pass consumes bytes */
            uint64_t tag;
            if (get_varint(p, end, &tag) != 0) return -1;
            if ((tag & 7) == 4) return (tag >> 3) == field ? 0 : -1;
            if (skip_field(p, end, tag & 7, tag >> 3, depth + 1) != 0) return -1;
        }
        return -1;
    default: /* 4 (end group without a start), 6, 7 */
        return -1;
    }
}

#define MAX_REPLY_ENV 16

struct reply {
    uint64_t action;
    int32_t exit_code;
    const uint8_t *out, *err, *notice;
    size_t out_len, err_len, notice_len;
    /* KEY=VALUE pairs to set before running locally (e.g. CCACHE_PREFIX for `ferry ccache gcc`), or
     * for the PREPROCESS command only. */
    char *env[MAX_REPLY_ENV];
    size_t env_count;
    /* Run locally with the connection inherited by the compiler: its exit tells the coordinator. */
    uint64_t hold_connection;
    /* PREPROCESS: the command (argv[0] an absolute path) and the file its stdout goes to. */
    char *pp_argv[MAX_PREPROCESS_ARGS + 1];
    size_t pp_argc;
    char *pp_output;
    /* PREPROCESS: a fork server of that command's program to ask first (cli/native/fork-server.c). */
    char *fork_server;
};

static int decode_reply(const uint8_t *p, const uint8_t *end, struct reply *r) {
    memset(r, 0, sizeof *r);
    while (p < end) {
        uint64_t tag, v;
        if (get_varint(&p, end, &tag) != 0 || (tag >> 3) == 0) return -1;
        unsigned wire = tag & 7;
        uint64_t field = tag >> 3;
        if ((field == 1 || field == 2 || field == 7) && wire == 0) {
            if (get_varint(&p, end, &v) != 0) return -1;
            if (field == 1) r->action = v;
            else if (field == 2) r->exit_code = (int32_t)(uint32_t)v;
            else r->hold_connection = v;
        } else if (field >= 3 && field <= 5 && wire == 2) {
            if (get_varint(&p, end, &v) != 0 || v > (uint64_t)(end - p)) return -1;
            const uint8_t **dst = field == 3 ? &r->out : field == 4 ? &r->err : &r->notice;
            size_t *dst_len = field == 3 ? &r->out_len : field == 4 ? &r->err_len : &r->notice_len;
            *dst = p;
            *dst_len = (size_t)v;
            p += v;
        } else if ((field == 8 || field == 9 || field == 10) && wire == 2) {
            if (get_varint(&p, end, &v) != 0 || v > (uint64_t)(end - p)) return -1;
            char *copy = strndup((const char *)p, (size_t)v);
            if (!copy) return -1;
            if (field == 9 || field == 10) {
                char **dst = field == 9 ? &r->pp_output : &r->fork_server;
                free(*dst);
                *dst = copy;
            } else if (r->pp_argc < MAX_PREPROCESS_ARGS) {
                r->pp_argv[r->pp_argc++] = copy;
            } else {
                free(copy);
                return -1;
            }
            p += v;
        } else if (field == 6 && wire == 2) {
            if (get_varint(&p, end, &v) != 0 || v > (uint64_t)(end - p)) return -1;
            if (r->env_count < MAX_REPLY_ENV && memchr(p, '=', (size_t)v)) {
                r->env[r->env_count] = strndup((const char *)p, (size_t)v);
                if (r->env[r->env_count]) r->env_count++;
            }
            p += v;
        } else if (skip_field(&p, end, wire, field, 0) != 0) {
            return -1;
        }
    }
    return 0;
}

/* Sends one frame (the 4-byte length is already in buf); 0 or -1 with errno. MSG_NOSIGNAL: a
 * coordinator dying mid-send must give EPIPE, not kill us with SIGPIPE. We never touch the SIGPIPE
 * disposition, so the compiler inherits the one make gave us. */
static int send_all(int fd, const uint8_t *buf, size_t len) {
    for (size_t off = 0; off < len;) {
        ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        off += (size_t)n;
    }
    return 0;
}

/* Reads one frame; NULL when the connection closes first or the frame is absurd. */
static uint8_t *read_frame(int fd, uint32_t *len) {
    uint8_t hdr[4];
    if (read_all(fd, hdr, 4) != 0) return NULL;
    *len = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 | (uint32_t)hdr[3] << 24;
    uint8_t *msg = *len <= MAX_REPLY_BYTES ? malloc(*len ? *len : 1) : NULL;
    if (!msg || read_all(fd, msg, *len) != 0) {
        free(msg);
        return NULL;
    }
    return msg;
}

/* The environment the preprocessor gets: ours, with the reply's variables set over it. */
static size_t job_environment(struct reply *r, char **out, size_t cap) {
    size_t n = 0;
    for (char **e = environ; *e && n < cap; e++) {
        size_t name = strcspn(*e, "=");
        int replaced = 0;
        for (size_t i = 0; i < r->env_count && !replaced; i++)
            replaced = strncmp(r->env[i], *e, name + 1) == 0;
        if (!replaced) out[n++] = *e;
    }
    for (size_t i = 0; i < r->env_count && n < cap; i++) out[n++] = r->env[i];
    return n;
}

static uint8_t *put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

static uint8_t *put_string(uint8_t *p, const char *s) {
    size_t len = strlen(s) + 1;
    memcpy(p, s, len);
    return p + len;
}

/* Hands the preprocessor to the coordinator's fork server (cli/native/fork-server.c documents the
 * request) with `out` and `err` as its stdout and stderr. Returns the connection, on which the
 * exit status comes once the job ends, or -1 when the server cannot be used (nothing ran). The
 * connection stays open for writing: the server takes its closing as the client going away. */
static int fork_server_start(struct reply *r, int out, int err) {
    char *cwd = getcwd(NULL, 0);
    size_t env_cap = 0;
    for (char **e = environ; *e; e++) env_cap++;
    env_cap += r->env_count;
    char **env = calloc(env_cap + 1, sizeof *env);
    if (!cwd || !env) {
        free(cwd);
        free(env);
        return -1;
    }
    size_t envc = job_environment(r, env, env_cap);
    mode_t mask = umask(0);
    umask(mask);
    size_t len = 4 + strlen(cwd) + 1 + 4 + 4;
    for (size_t i = 0; i < r->pp_argc; i++) len += strlen(r->pp_argv[i]) + 1;
    for (size_t i = 0; i < envc; i++) len += strlen(env[i]) + 1;
    uint8_t *buf = len <= (4u << 20) ? malloc(8 + len) : NULL;
    int fd = -1;
    if (buf) {
        uint8_t *p = buf;
        memcpy(p, "FFS1", 4);
        p = put_u32(p + 4, (uint32_t)len);
        p = put_u32(p, (uint32_t)mask);
        p = put_string(p, cwd);
        p = put_u32(p, (uint32_t)r->pp_argc);
        for (size_t i = 0; i < r->pp_argc; i++) p = put_string(p, r->pp_argv[i]);
        p = put_u32(p, (uint32_t)envc);
        for (size_t i = 0; i < envc; i++) p = put_string(p, env[i]);
        struct sockaddr_un addr = {.sun_family = AF_UNIX};
        if (strlen(r->fork_server) < sizeof addr.sun_path) {
            strcpy(addr.sun_path, r->fork_server);
            fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        }
        if (fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
            int fds[2] = {out, err};
            char control[CMSG_SPACE(sizeof fds)];
            memset(control, 0, sizeof control);
            struct iovec iov = {.iov_base = buf, .iov_len = 8};
            struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof fds);
            memcpy(CMSG_DATA(c), fds, sizeof fds);
            ssize_t n;
            do n = sendmsg(fd, &msg, MSG_NOSIGNAL);
            while (n < 0 && errno == EINTR);
            if (n != 8 || send_all(fd, buf + 8, len) != 0) {
                close(fd);
                fd = -1;
            }
        } else if (fd >= 0) {
            close(fd);
            fd = -1;
        }
    }
    free(buf);
    free(env);
    free(cwd);
    return fd;
}

/* Runs the preprocessor the coordinator asked for, stdout into its file, and reports the exit
 * status and stderr in a PreprocessResult frame (field 1: int32 exit_code, field 2: stderr, field
 * 3: whether the fork server ran it). Preprocessing here rather than in the coordinator: forking
 * this small process costs a fraction of forking the coordinator, and the preprocessor stays in
 * the build's own process tree; a fork server, when the coordinator names one, costs less still. */
static uint8_t *run_preprocessor(struct reply *r, size_t *frame_len) {
    int status = 127;
    size_t err_len = 0, err_cap = 4096;
    char *err = malloc(err_cap);
    int pipefd[2] = {-1, -1};
    int forked = -1; /* the fork server's connection, when it runs the job */
    int out = r->pp_output ? open(r->pp_output, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600) : -1;
    if (!err || out < 0 || r->pp_argc == 0 || pipe2(pipefd, O_CLOEXEC) != 0) {
        if (err) {
            int n = snprintf(err, err_cap, "ferry: cannot run the preprocessor: %s\n",
                             r->pp_argc == 0 ? "no command" : strerror(errno));
            err_len = n > 0 ? ((size_t)n < err_cap ? (size_t)n : err_cap - 1) : 0;
        }
    } else {
        r->pp_argv[r->pp_argc] = NULL;
        if (r->fork_server && *r->fork_server) forked = fork_server_start(r, out, pipefd[1]);
        /* No fork server took it: run it ourselves. */
        pid_t pid = forked < 0 ? fork() : -1;
        if (pid == 0) {
            dup2(out, 1);
            dup2(pipefd[1], 2);
            /* Variables the compiler driver would have set (a driverless command, see driver-template.ts). */
            for (size_t i = 0; i < r->env_count; i++) putenv(r->env[i]);
            execv(r->pp_argv[0], r->pp_argv);
            dprintf(2, "ferry: cannot run %s: %s\n", r->pp_argv[0], strerror(errno));
            _exit(127);
        }
        close(pipefd[1]);
        if (pid > 0 || forked >= 0) {
            for (;;) {
                if (err_len == err_cap && err_cap < MAX_PREPROCESS_STDERR) {
                    char *bigger = realloc(err, err_cap * 2);
                    if (bigger) {
                        err = bigger;
                        err_cap *= 2;
                    }
                }
                char sink[4096];
                int full = err_len == err_cap;
                ssize_t n = read(pipefd[0], full ? sink : err + err_len, full ? sizeof sink : err_cap - err_len);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) break;
                if (!full) err_len += (size_t)n; /* past the cap the rest is drained and dropped */
            }
            if (forked >= 0) {
                uint8_t b[4];
                if (read_all(forked, b, 4) == 0) {
                    status = (int32_t)((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24);
                } else {
                    /* The server went away mid-job: a failure, which the coordinator repeats through the driver. */
                    status = 127;
                    const char *why = "ferry: the preprocessor's fork server went away\n";
                    size_t n = strlen(why);
                    if (err_len + n <= err_cap) {
                        memcpy(err + err_len, why, n);
                        err_len += n;
                    }
                }
                close(forked);
            } else {
                int ws;
                while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
                }
                status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
            }
        }
        close(pipefd[0]);
    }
    if (out >= 0) close(out);
    size_t body = 1 + varint_len(int32_wire(status)) + bytes_len(err_len) + (forked >= 0 ? 2 : 0);
    uint8_t *buf = malloc(4 + body);
    if (buf) {
        uint8_t *p = buf;
        for (int i = 0; i < 4; i++) *p++ = (uint8_t)(body >> (8 * i));
        *p++ = 1 << 3 | 0;
        p = put_varint(p, int32_wire(status));
        p = put_bytes(p, 2, err ? err : "", err_len);
        if (forked >= 0) {
            *p++ = 3 << 3 | 0;
            *p++ = 1;
        }
        *frame_len = (size_t)(p - buf);
    }
    free(err);
    return buf;
}

/* Sends the job, waits for the verdict and carries it out. Never returns. */
static _Noreturn void run_job(int fd) {
    char *cwd = getcwd(NULL, 0);
    if (!cwd) {
        /* The working directory is gone: nothing remote can help; let the compiler say so. */
        close(fd);
        exec_compiler();
    }
    size_t len;
    uint8_t *req = encode_request(cwd, &len);
    if (!req) {
        snprintf(g_what, sizeof g_what, "the job is too large to send to the coordinator");
        fall_back("coordinator-lost");
    }
    if (send_all(fd, req, len) != 0) {
        snprintf(g_what, sizeof g_what, "the coordinator went away while receiving the job (%s)", strerror(errno));
        fall_back("coordinator-lost");
    }
    free(req);
    free(cwd);

    struct reply r;
    for (;;) {
        uint32_t msg_len = 0;
        uint8_t *msg = read_frame(fd, &msg_len);
        if (!msg) {
            snprintf(g_what, sizeof g_what, "the coordinator closed the connection without answering");
            fall_back("coordinator-lost");
        }
        if (decode_reply(msg, msg + msg_len, &r) != 0) {
            close(fd);
            snprintf(g_what, sizeof g_what, "the coordinator sent a malformed reply");
            fall_back("coordinator-lost");
        }
        if (r.action != ACTION_PREPROCESS) break;
        size_t result_len = 0;
        uint8_t *result = run_preprocessor(&r, &result_len);
        if (!result || send_all(fd, result, result_len) != 0) {
            snprintf(g_what, sizeof g_what, "the coordinator went away during preprocessing");
            fall_back("coordinator-lost");
        }
        free(result);
        free(msg);
    }
    if (r.action == ACTION_RUN_LOCALLY && r.hold_connection) {
        /* The compiler keeps the connection open until it exits (the one fd we let through exec). */
        fcntl(fd, F_SETFD, 0);
    } else {
        close(fd);
    }
    if (r.action == ACTION_DONE) {
        /* Losing stdout (`gcc -E` without -o) must not pass for success; a lost stderr may. */
        int out_failed = write_all(1, r.out, r.out_len) != 0;
        write_all(2, r.err, r.err_len);
        exit(out_failed && r.exit_code == 0 ? 1 : r.exit_code);
    }
    if (r.action == ACTION_RUN_LOCALLY) {
        for (size_t i = 0; i < r.env_count; i++) putenv(r.env[i]);
        if (r.notice_len) {
            write_all(2, r.notice, r.notice_len);
            if (r.notice[r.notice_len - 1] != '\n') write_all(2, "\n", 1);
        }
        exec_compiler();
    }
    snprintf(g_what, sizeof g_what, "the coordinator answered with an unknown action %llu",
             (unsigned long long)r.action);
    fall_back("coordinator-lost");
}

/* ---------- starting the coordinator on demand ---------- */

/* In the grandchild: becomes the daemon. stdin /dev/null, stdout+stderr the log (never our
 * stdout/stderr: ninja waits for EOF on them), fd 3 the readiness pipe, nothing else inherited
 * (make's jobserver fds, our lock). */
static _Noreturn void exec_daemon(int ready_fd) {
    setsid();
    char log[PATH_MAX + 32], script[PATH_MAX + 32];
    snprintf(log, sizeof log, "%s/coordinator.log", g_dir);
    node_script(script, sizeof script, "FERRY_COORDINATOR_JS", "coordinator/main.js");
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int log_fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
    if (null_fd < 0 || log_fd < 0) _exit(127);
    /* Lift the three above fd 3 first, so that no dup2 below overwrites a source sitting on 0-3. */
    int in = fcntl(null_fd, F_DUPFD_CLOEXEC, 10), out = fcntl(log_fd, F_DUPFD_CLOEXEC, 10);
    int ready = fcntl(ready_fd, F_DUPFD_CLOEXEC, 10);
    /* dup2 clears FD_CLOEXEC on 0-3: exactly these four survive the exec. */
    if (in < 0 || out < 0 || ready < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0 ||
        dup2(ready, 3) < 0)
        _exit(127);
    if (close_range(4, ~0u, 0) != 0) {
        long max = sysconf(_SC_OPEN_MAX);
        for (long fd = 4; fd < (max > 0 && max < 65536 ? max : 65536); fd++) close((int)fd);
    }
    /* A daemon starts from default signal handling, whatever make or nohup gave us. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    const int sigs[] = {SIGPIPE, SIGINT, SIGQUIT, SIGHUP, SIGTERM};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) signal(sigs[i], SIG_DFL);

    /* The coordinator's heap is ~15 MB of live data, and V8 sizes its first old-space limit from
     * that: a full mark-compact every ~10 jobs, 1.3 ms of CPU per job (measured by npm run bench
     * --coordinator-profile). A 64 MB start makes them rare (0.4 ms per job) for some RSS. */
    char *argv[] = {NULL, COORDINATOR_HEAP_FLAG, script, "--daemon", NULL};
    exec_node(argv);
    fprintf(stderr, "ferry launcher: cannot start the coordinator: cannot run node: %s\n", strerror(errno));
    _exit(127);
}

/* Double-forks the coordinator (so it is nobody's child but init's) and waits for its "listening" byte.
 * Returns 0 when it listens; -1 with g_what set. */
static int spawn_coordinator(void) {
    int pipe_fd[2];
    if (pipe2(pipe_fd, O_CLOEXEC) != 0) {
        snprintf(g_what, sizeof g_what, "cannot start the coordinator (pipe: %s)", strerror(errno));
        return -1;
    }
    fflush(NULL);
    pid_t child = fork();
    if (child == 0) {
        pid_t grandchild = fork();
        if (grandchild == 0) exec_daemon(pipe_fd[1]);
        _exit(grandchild < 0 ? 1 : 0);
    }
    close(pipe_fd[1]); /* so that the daemon's death reads as EOF */
    if (child < 0) {
        close(pipe_fd[0]);
        snprintf(g_what, sizeof g_what, "cannot start the coordinator (fork: %s)", strerror(errno));
        return -1;
    }
    while (waitpid(child, NULL, 0) < 0 && errno == EINTR) {
    }

    const char *t = getenv("FERRY_START_TIMEOUT_MS");
    char *end;
    long timeout_ms = t && *t ? strtol(t, &end, 10) : DEFAULT_START_TIMEOUT_MS;
    if (!t || !*t || *end || timeout_ms < 0 || timeout_ms > INT_MAX) timeout_ms = DEFAULT_START_TIMEOUT_MS;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    struct pollfd pfd = {.fd = pipe_fd[0], .events = POLLIN};
    long left = timeout_ms;
    int ready = 0;
    for (;;) { /* bounded by the deadline: only EINTR repeats it */
        int n = poll(&pfd, 1, (int)left);
        if (n > 0) {
            char byte;
            ssize_t got;
            while ((got = read(pipe_fd[0], &byte, 1)) < 0 && errno == EINTR) {
            }
            ready = got == 1;
            if (!ready)
                snprintf(g_what, sizeof g_what, "the coordinator exited while starting");
            break;
        }
        int err = errno;
        clock_gettime(CLOCK_MONOTONIC, &now);
        left = timeout_ms - ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000);
        if (n == 0 || left <= 0 || err != EINTR) {
            snprintf(g_what, sizeof g_what, "the coordinator did not start within %ld ms", timeout_ms);
            break;
        }
    }
    close(pipe_fd[0]);
    return ready ? 0 : -1;
}

/* Nobody listens: start the coordinator (once, whatever the parallelism) and connect. */
static int start_and_connect(void) {
    if (make_dir() != 0) {
        snprintf(g_what, sizeof g_what, "cannot create the runtime directory %s (%s)", g_dir, strerror(errno));
        fall_back("runtime-dir-unsafe");
    }
    if (check_dir() != 0) {
        snprintf(g_what, sizeof g_what, "the runtime directory %s is not yours or is writable by others", g_dir);
        fall_back("runtime-dir-unsafe");
    }
    char lock_path[PATH_MAX + 32];
    snprintf(lock_path, sizeof lock_path, "%s/start.lock", g_dir);
    int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
    if (lock < 0) {
        snprintf(g_what, sizeof g_what, "cannot open %s (%s)", lock_path, strerror(errno));
        fall_back("coordinator-start-failed");
    }
    /* Sixteen parallel jobs of a fresh build queue here; the first starts the coordinator. */
    while (flock(lock, LOCK_EX) != 0 && errno == EINTR) {
    }
    int fd = try_connect(); /* someone else may have started it while we waited */
    if (fd < 0 && (errno == ENOENT || errno == ECONNREFUSED)) {
        if (spawn_coordinator() != 0) {
            close(lock);
            fall_back("coordinator-start-failed");
        }
        fd = try_connect();
    }
    int err = errno;
    close(lock);
    if (fd < 0) {
        snprintf(g_what, sizeof g_what, "cannot reach the coordinator at %s (%s)", g_sock, strerror(err));
        fall_back("coordinator-unreachable");
    }
    return fd;
}

int main(int argc, char **argv) {
    const char *self = argc > 0 && argv[0] ? base_name(argv[0]) : "ferry";
    if (strcmp(self, "ferry") == 0) {
        if (argc < 2 || argv[1][0] == '-') exec_cli(argc, argv);
        for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
            if (strcmp(argv[1], subcommands[i]) == 0) exec_cli(argc, argv);
        g_compiler = argv[1];
        g_cargv = argv + 1;
    } else {
        /* Masquerading as the compiler (a gcc -> ferry symlink): ccache style. */
        g_compiler = self;
        g_cargv = argv;
    }

    const char *disable = getenv("FERRY_DISABLE");
    if (disable && strcmp(disable, "1") == 0) exec_compiler();

    if (runtime_paths() != 0) {
        snprintf(g_what, sizeof g_what, "the runtime directory path is too long for a Unix socket");
        fall_back("coordinator-unreachable");
    }
    int state = check_dir();
    if (state < 0) {
        snprintf(g_what, sizeof g_what, "the runtime directory %s is not yours or is writable by others", g_dir);
        fall_back("runtime-dir-unsafe");
    }
    int fd = state == 0 ? try_connect() : (errno = ENOENT, -1);
    if (fd < 0) {
        if (errno != ENOENT && errno != ECONNREFUSED) {
            snprintf(g_what, sizeof g_what, "cannot reach the coordinator at %s (%s)", g_sock, strerror(errno));
            fall_back("coordinator-unreachable");
        }
        fd = start_and_connect();
    }
    run_job(fd);
}
