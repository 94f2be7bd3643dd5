/*
 * Reference floors for the benchmarks, built by bench/run.ts at bench time (not
 * part of the library):
 *   echo server PATH                       accept one client, echo each message as a reply
 *   echo client PATH ITER SIZE [DEPTH]     send SIZE-byte messages, DEPTH in flight (default 1), print JSON
 *   echo vfu PATH ITER [DEPTH [REGION [OFFSET]]]
 *                                          a vfio-user client: VERSION, then 4-byte REGION_READs of
 *                                          region REGION (default 0) at OFFSET (default 0) with
 *                                          DEPTH in flight (default 1), print JSON
 *   echo memcpy BYTES ITER                 memcpy BYTES between two buffers ITER times, print JSON
 * Replies are read generically (16-byte header, then msg_size - 16 bytes).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int read_full(int fd, void *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, (char *)buf + got, len - got);
        if (n == 0) return 0;
        if (n < 0) { if (errno == EINTR) continue; return -1; }
        got += (size_t)n;
    }
    return 1;
}

static int write_full(int fd, const void *buf, size_t len) {
    size_t put = 0;
    while (put < len) {
        ssize_t n = write(fd, (const char *)buf + put, len - put);
        if (n < 0) { if (errno == EINTR) continue; return -1; }
        put += (size_t)n;
    }
    return 0;
}

static struct sockaddr_un address(const char *path) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
    return sa;
}

static int serve(const char *path) {
    int ls = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = address(path);
    unlink(path);
    if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 1) < 0) { perror("bind"); return 1; }
    printf("ready\n");
    fflush(stdout);
    int fd = accept(ls, NULL, NULL);
    if (fd < 0) { perror("accept"); return 1; }
    static unsigned char buf[1 << 20];
    for (;;) {
        int r = read_full(fd, buf, 16);
        if (r <= 0) break;
        uint32_t size;
        memcpy(&size, buf + 4, 4);
        if (size < 16 || size > sizeof(buf)) break;
        if (read_full(fd, buf + 16, size - 16) <= 0) break;
        uint32_t flags = 1;
        memcpy(buf + 8, &flags, 4);
        if (write_full(fd, buf, size) < 0) break;
    }
    close(fd);
    close(ls);
    unlink(path);
    return 0;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int connect_to(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = address(path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) { perror("connect"); exit(1); }
    return fd;
}

/* Reads one whole message; returns its msg_id, or -1. */
static int read_message(int fd, unsigned char *buf, size_t cap) {
    if (read_full(fd, buf, 16) <= 0) return -1;
    uint32_t size, flags;
    memcpy(&size, buf + 4, 4);
    memcpy(&flags, buf + 8, 4);
    if (size < 16 || size > cap || (flags & 0x20)) { fprintf(stderr, "bad reply (size %u flags 0x%x)\n", size, flags); return -1; }
    if (read_full(fd, buf + 16, size - 16) <= 0) return -1;
    uint16_t id;
    memcpy(&id, buf, 2);
    return id;
}

static void put_header(unsigned char *msg, uint16_t cmd, uint32_t size) {
    memset(msg, 0, 16);
    memcpy(msg + 2, &cmd, 2);
    memcpy(msg + 4, &size, 4);
}

/* Round trips of `msg` (SIZE bytes) with DEPTH in flight; prints per-request latency JSON. */
static int run_loop(int fd, unsigned char *msg, uint32_t size, long iterations, long depth) {
    static unsigned char reply[1 << 20];
    unsigned char *batch = calloc((size_t)depth, size);
    long rounds = iterations / depth, warmup = rounds / 10 + 10;
    int64_t *samples = calloc((size_t)rounds, sizeof(int64_t));
    for (long r = -warmup; r < rounds; r++) {
        for (long k = 0; k < depth; k++) {
            memcpy(batch + k * size, msg, size);
            uint16_t id = (uint16_t)(r * depth + k);
            memcpy(batch + k * size, &id, 2);
        }
        int64_t t0 = now_ns();
        if (write_full(fd, batch, (size_t)size * depth) < 0) { fprintf(stderr, "write failed\n"); return 1; }
        for (long k = 0; k < depth; k++) {
            int id = read_message(fd, reply, sizeof(reply));
            if (id != (uint16_t)(r * depth + k)) { fprintf(stderr, "reply id mismatch\n"); return 1; }
        }
        int64_t t1 = now_ns();
        if (r >= 0) samples[r] = (t1 - t0) / depth;
    }
    double sum = 0;
    for (long i = 0; i < rounds; i++) sum += (double)samples[i];
    qsort(samples, (size_t)rounds, sizeof(int64_t), cmp_i64);
    printf("{\"iterations\":%ld,\"depth\":%ld,\"meanNs\":%.1f,\"p50Ns\":%lld,\"p99Ns\":%lld}\n", rounds * depth, depth, sum / (double)rounds,
           (long long)samples[rounds / 2], (long long)samples[rounds * 99 / 100]);
    return 0;
}

static int client(const char *path, long iterations, uint32_t size, long depth) {
    int fd = connect_to(path);
    unsigned char *msg = calloc(1, size);
    put_header(msg, 9, size);
    return run_loop(fd, msg, size, iterations, depth);
}

static int vfu_client(const char *path, long iterations, long depth, uint32_t region, uint64_t offset) {
    int fd = connect_to(path);
    static unsigned char buf[1 << 16];
    const char *json = "{\"capabilities\":{\"max_msg_fds\":8}}";
    uint32_t vsize = 16 + 4 + (uint32_t)strlen(json) + 1;
    put_header(buf, 1, vsize);
    uint16_t major = 0, minor = 2;
    memcpy(buf + 16, &major, 2);
    memcpy(buf + 18, &minor, 2);
    memcpy(buf + 20, json, strlen(json) + 1);
    if (write_full(fd, buf, vsize) < 0 || read_message(fd, buf, sizeof(buf)) < 0) { fprintf(stderr, "VERSION failed\n"); return 1; }
    unsigned char msg[32];
    put_header(msg, 9, 32); /* REGION_READ {u64 offset, u32 region, u32 count 4} */
    uint32_t count = 4;
    memcpy(msg + 16, &offset, 8);
    memcpy(msg + 24, &region, 4);
    memcpy(msg + 28, &count, 4);
    return run_loop(fd, msg, 32, iterations, depth);
}

static int copy_bench(size_t bytes, long iterations) {
    unsigned char *a = aligned_alloc(4096, bytes), *b = aligned_alloc(4096, bytes);
    memset(a, 1, bytes);
    memset(b, 2, bytes);
    for (long i = 0; i < iterations / 10; i++) memcpy(i & 1 ? a : b, i & 1 ? b : a, bytes);
    int64_t t0 = now_ns();
    for (long i = 0; i < iterations; i++) {
        memcpy(i & 1 ? a : b, i & 1 ? b : a, bytes);
        __asm__ volatile("" ::: "memory");
    }
    int64_t t1 = now_ns();
    double ns = (double)(t1 - t0) / (double)iterations;
    printf("{\"bytes\":%zu,\"iterations\":%ld,\"nsPerCopy\":%.1f,\"gbPerSecond\":%.2f}\n", bytes, iterations, ns, (double)bytes / ns);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "server") == 0) return serve(argv[2]);
    if ((argc == 5 || argc == 6) && strcmp(argv[1], "client") == 0)
        return client(argv[2], atol(argv[3]), (uint32_t)atol(argv[4]), argc == 6 ? atol(argv[5]) : 1);
    if (argc >= 4 && argc <= 7 && strcmp(argv[1], "vfu") == 0)
        return vfu_client(argv[2], atol(argv[3]), argc >= 5 ? atol(argv[4]) : 1, argc >= 6 ? (uint32_t)atol(argv[5]) : 0,
                          argc >= 7 ? strtoull(argv[6], NULL, 0) : 0);
    if (argc == 4 && strcmp(argv[1], "memcpy") == 0) return copy_bench((size_t)atol(argv[2]), atol(argv[3]));
    fprintf(stderr, "usage: %s server PATH | client PATH ITER SIZE [DEPTH] | vfu PATH ITER [DEPTH [REGION [OFFSET]]] | memcpy BYTES ITER\n", argv[0]);
    return 2;
}
