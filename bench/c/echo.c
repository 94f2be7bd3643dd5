/*
 * Reference floor for the transport benchmark: a C echo over a UNIX stream
 * socket, speaking vfio-user framing (16-byte header, msg_size, reply flag).
 *   echo server PATH                 accept one client, echo each message as a reply
 *   echo client PATH ITERATIONS SIZE send SIZE-byte messages one at a time, print JSON
 * Built by bench/run.ts at bench time; not part of the library.
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

static int client(const char *path, long iterations, uint32_t size) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = address(path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) { perror("connect"); return 1; }
    unsigned char *msg = calloc(1, size), *reply = calloc(1, size);
    uint16_t cmd = 9;
    memcpy(msg + 2, &cmd, 2);
    memcpy(msg + 4, &size, 4);
    int64_t *samples = calloc((size_t)iterations, sizeof(int64_t));
    long warmup = iterations / 10 + 100;
    for (long i = -warmup; i < iterations; i++) {
        uint16_t id = (uint16_t)i;
        memcpy(msg, &id, 2);
        int64_t t0 = now_ns();
        if (write_full(fd, msg, size) < 0 || read_full(fd, reply, size) <= 0) { fprintf(stderr, "echo failed\n"); return 1; }
        int64_t t1 = now_ns();
        if (memcmp(reply, msg, 2) != 0) { fprintf(stderr, "reply id mismatch\n"); return 1; }
        if (i >= 0) samples[i] = t1 - t0;
    }
    double sum = 0;
    for (long i = 0; i < iterations; i++) sum += (double)samples[i];
    qsort(samples, (size_t)iterations, sizeof(int64_t), cmp_i64);
    printf("{\"iterations\":%ld,\"meanNs\":%.1f,\"p50Ns\":%lld,\"p99Ns\":%lld}\n", iterations, sum / (double)iterations,
           (long long)samples[iterations / 2], (long long)samples[iterations * 99 / 100]);
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "server") == 0) return serve(argv[2]);
    if (argc == 5 && strcmp(argv[1], "client") == 0) return client(argv[2], atol(argv[3]), (uint32_t)atol(argv[4]));
    fprintf(stderr, "usage: %s server PATH | client PATH ITERATIONS SIZE\n", argv[0]);
    return 2;
}
