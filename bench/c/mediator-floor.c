/*
 * The floor of the mediator benchmark, built by bench/mediator.ts at bench
 * time (not part of the library): the least a relay between a client and a
 * device can cost — one process, one poll() loop, bytes copied from one
 * socket to the other without looking at them (no fds passed, no parsing).
 *   mediator-floor UPSTREAM_SOCK LISTEN_SOCK
 * Prints "ready" once listening; serves one client at a time, each with a
 * fresh upstream connection, until killed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static struct sockaddr_un address(const char *path) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
    return sa;
}

/* Copies what `from` has to `to`; 0 on EOF or error. */
static int pump(int from, int to) {
    static char buf[1 << 16];
    ssize_t n = read(from, buf, sizeof(buf));
    if (n <= 0) return n < 0 && errno == EINTR;
    for (ssize_t put = 0; put < n;) {
        ssize_t w = write(to, buf + put, (size_t)(n - put));
        if (w < 0) { if (errno == EINTR) continue; return 0; }
        put += w;
    }
    return 1;
}

static void relay(int client, const char *upstream_path) {
    int up = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = address(upstream_path);
    if (connect(up, (struct sockaddr *)&sa, sizeof(sa)) < 0) { perror("connect upstream"); close(up); return; }
    struct pollfd fds[2] = { { .fd = client, .events = POLLIN }, { .fd = up, .events = POLLIN } };
    for (;;) {
        if (poll(fds, 2, -1) < 0) { if (errno == EINTR) continue; break; }
        if (fds[0].revents && !pump(client, up)) break;
        if (fds[1].revents && !pump(up, client)) break;
    }
    close(up);
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s UPSTREAM_SOCK LISTEN_SOCK\n", argv[0]); return 2; }
    int ls = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = address(argv[2]);
    unlink(argv[2]);
    if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 4) < 0) { perror("bind"); return 1; }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int c = accept(ls, NULL, NULL);
        if (c < 0) { if (errno == EINTR) continue; perror("accept"); return 1; }
        relay(c, argv[1]);
        close(c);
    }
}
