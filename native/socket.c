/*
 * socket.c: UNIX stream sockets. Creating, binding, connecting, accepting;
 * sendmsg/recvmsg with SCM_RIGHTS fd passing; send of one buffer's range;
 * shutdown; SO_PEERCRED.
 */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_IOV 64
#define RECV_STACK_FDS (MAX_SEND_FDS + 8)

static napi_value js_unix_socket(napi_env env, napi_callback_info info) {
  (void)info;
  return ret_fd(env, socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), "socket");
}

/* `(fd, path)` with `path` as a filesystem sockaddr_un. */
static bool addr_args(napi_env env, napi_callback_info info, int *fd, struct sockaddr_un *addr,
                      socklen_t *len) {
  napi_value argv[2];

  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (!fd_args(env, info, argv, 2, fd) ||
      !arg_string(env, argv[1], "path", addr->sun_path, sizeof addr->sun_path))
    return false;
  *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(addr->sun_path) + 1);
  return true;
}

static napi_value js_bind(napi_env env, napi_callback_info info) {
  struct sockaddr_un addr;
  socklen_t len;
  int fd;

  if (!addr_args(env, info, &fd, &addr, &len)) return NULL;
  return bind(fd, (struct sockaddr *)&addr, len) < 0 ? throw_errno(env, "bind", errno) : NULL;
}

static napi_value js_connect(napi_env env, napi_callback_info info) {
  struct sockaddr_un addr;
  socklen_t len;
  int fd;

  if (!addr_args(env, info, &fd, &addr, &len)) return NULL;
  /* No EINTR retry: an interrupted connect() carries on asynchronously. */
  return ret_sys(env, connect(fd, (struct sockaddr *)&addr, len));
}

static napi_value js_listen(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd, backlog;
  if (!fd_args(env, info, argv, 2, &fd) || !arg_int(env, argv[1], "backlog", &backlog)) return NULL;
  return listen(fd, backlog) < 0 ? throw_errno(env, "listen", errno) : NULL;
}

static napi_value js_accept(napi_env env, napi_callback_info info) {
  int fd, r;
  if (!one_fd(env, info, &fd)) return NULL;
  r = RETRY(accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (r < 0) return ret_int(env, -errno);
  fd_own(env, r);
  return ret_int(env, r);
}

/* `getsockopt(SO_ACCEPTCONN)`: 1 for a listening socket, 0 otherwise, or -errno. */
static napi_value js_listening(napi_env env, napi_callback_info info) {
  int fd, on = 0;
  socklen_t len = sizeof on;
  if (!one_fd(env, info, &fd)) return NULL;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) < 0) return ret_int(env, -errno);
  return ret_int(env, on ? 1 : 0);
}

static napi_value js_socket_pair(napi_env env, napi_callback_info info) {
  napi_value pair, a, b;
  int sv[2];

  (void)info;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
    return throw_errno(env, "socketpair", errno);
  fd_own(env, sv[0]);
  fd_own(env, sv[1]);
  if (napi_create_array_with_length(env, 2, &pair) != napi_ok ||
      napi_create_int32(env, sv[0], &a) != napi_ok || napi_create_int32(env, sv[1], &b) != napi_ok ||
      napi_set_element(env, pair, 0, a) != napi_ok || napi_set_element(env, pair, 1, b) != napi_ok) {
    fd_disown(sv[0]);
    fd_disown(sv[1]);
    close(sv[0]);
    close(sv[1]);
    return fail(env);
  }
  return pair;
}

/* `data`: an array of at most MAX_IOV Uint8Arrays. */
static bool collect_iov(napi_env env, napi_value arr, struct msghdr *msg, size_t *total) {
  napi_value el;
  uint32_t n;
  bool is = false;
  char what[24];

  if (napi_is_array(env, arr, &is) != napi_ok || !is ||
      napi_get_array_length(env, arr, &n) != napi_ok || n > MAX_IOV)
    return throw_type(env, "data must be an array of at most %d Uint8Arrays", MAX_IOV), false;
  for (uint32_t i = 0; i < n; i++) {
    struct iovec *iov = &msg->msg_iov[i];
    snprintf(what, sizeof what, "data[%u]", i);
    if (napi_get_element(env, arr, i, &el) != napi_ok) return fail(env), false;
    if (!arg_typed(env, el, what, napi_uint8_array, &iov->iov_base, &iov->iov_len)) return false;
    *total += iov->iov_len;
  }
  msg->msg_iovlen = n;
  return true;
}

/* `fds`: null/undefined, or an array of at most MAX_SEND_FDS fds. */
static bool collect_fds(napi_env env, napi_value arr, int *fds, size_t *nfds) {
  napi_value el;
  uint32_t n;
  bool is = false;

  *nfds = 0;
  if (is_type(env, arr, napi_null) || is_type(env, arr, napi_undefined)) return true;
  if (napi_is_array(env, arr, &is) != napi_ok || !is ||
      napi_get_array_length(env, arr, &n) != napi_ok || n > MAX_SEND_FDS)
    return throw_type(env, "fds must be null or an array of at most %d fds", MAX_SEND_FDS), false;
  for (uint32_t i = 0; i < n; i++) {
    if (napi_get_element(env, arr, i, &el) != napi_ok) return fail(env), false;
    if (!arg_int(env, el, "each fd", &fds[i])) return false;
  }
  *nfds = n;
  return true;
}

static napi_value js_sendmsg(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  struct iovec iov[MAX_IOV];
  int fd, fds[MAX_SEND_FDS];
  union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof fds)]; } ctl;
  struct msghdr msg = {.msg_iov = iov};
  size_t nfds = 0, total = 0;

  if (!get_args(env, info, argv, 3, 2, NULL) || !arg_int(env, argv[0], "fd", &fd) ||
      !collect_iov(env, argv[1], &msg, &total) || !collect_fds(env, argv[2], fds, &nfds))
    return NULL;
  if (nfds > 0 && total == 0) return throw_type(env, "fds need at least one byte of data");
  if (nfds > 0) {
    msg.msg_control = ctl.buf;
    msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    memset(ctl.buf, 0, msg.msg_controllen); /* no uninitialised padding to the kernel */
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
  }
  return ret_sys(env, RETRY(sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT)));
}

/* `(fd, buf, offset, length)`: one send() of buf[offset, offset + length), no iovec array to walk. */
static napi_value js_send(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  void *data;
  size_t len;
  double offset, length;
  int fd;

  if (!fd_args(env, info, argv, 4, &fd) ||
      !arg_typed(env, argv[1], "buf", napi_uint8_array, &data, &len) ||
      !arg_number(env, argv[2], "offset", 0, (double)len, &offset) ||
      !arg_number(env, argv[3], "length", 0, (double)len - offset, &length))
    return NULL;
  return ret_sys(env, RETRY(send(fd, (char *)data + (size_t)offset, (size_t)length, MSG_NOSIGNAL | MSG_DONTWAIT)));
}

/* Moves every received fd into meta[2..] (owned by `env`), closing those that do not fit. */
static void take_fds(napi_env env, struct msghdr *msg, int32_t *meta, size_t room) {
  size_t count = 0;
  int32_t flags = 0;

  for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0))
      continue; /* e.g. SCM_CREDENTIALS: nothing to close */
    for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (count < room) fd_own(env, fd), meta[2 + count++] = fd;
      else close(fd), flags |= 1;
    }
  }
  if (msg->msg_flags & MSG_CTRUNC) flags |= 1;
  if (msg->msg_flags & MSG_TRUNC) flags |= 2;
  meta[0] = (int32_t)count;
  meta[1] = flags;
}

static napi_value js_recvmsg(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * RECV_STACK_FDS) + CMSG_SPACE(sizeof(struct ucred))];
  } stack;
  struct iovec iov;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                       .msg_control = stack.buf, .msg_controllen = sizeof stack.buf};
  int32_t *meta;
  size_t len, room;
  ssize_t n;
  int fd, err;

  if (!fd_args(env, info, argv, 3, &fd) ||
      !arg_typed(env, argv[1], "buf", napi_uint8_array, &iov.iov_base, &iov.iov_len) ||
      !arg_typed(env, argv[2], "meta", napi_int32_array, (void **)&meta, &len))
    return NULL;
  if (iov.iov_len == 0) return throw_type(env, "buf must not be empty");
  if (len < 2) return throw_type(env, "meta must have room for at least 2 entries");
  meta[0] = meta[1] = 0;
  room = len - 2;
  if (room > RECV_STACK_FDS) {
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * room) + CMSG_SPACE(sizeof(struct ucred));
    if (!(msg.msg_control = malloc(msg.msg_controllen))) return ret_int(env, -ENOMEM);
  }
  n = RETRY(recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT));
  err = errno;
  if (n >= 0) take_fds(env, &msg, meta, room);
  if (msg.msg_control != stack.buf) free(msg.msg_control);
  return ret_int(env, n < 0 ? -err : n);
}

static napi_value js_shutdown(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd, how;
  if (!fd_args(env, info, argv, 2, &fd) || !arg_int(env, argv[1], "how", &how)) return NULL;
  return ret_sys(env, shutdown(fd, how));
}

static napi_value js_peer_cred(napi_env env, napi_callback_info info) {
  struct ucred cred;
  socklen_t len = sizeof cred;
  napi_value obj;
  int fd;

  if (!one_fd(env, info, &fd)) return NULL;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
    return throw_errno(env, "getsockopt", errno);
  TRY(napi_create_object(env, &obj));
  if (!set_int(env, obj, "pid", cred.pid) || !set_int(env, obj, "uid", cred.uid) ||
      !set_int(env, obj, "gid", cred.gid))
    return fail(env);
  return obj;
}

bool socket_init(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
      {"unixSocket", js_unix_socket}, {"bind", js_bind}, {"listen", js_listen},
      {"accept", js_accept}, {"connect", js_connect}, {"socketPair", js_socket_pair},
      {"sendmsg", js_sendmsg}, {"send", js_send}, {"recvmsg", js_recvmsg}, {"shutdown", js_shutdown},
      {"peerCred", js_peer_cred}, {"listening", js_listening},
  };
  return EXPORT_FNS(env, exports, fns);
}
