/*
 * vfio_user_native.c: the syscalls Node cannot make on its own (fd passing,
 * mmap, eventfd, memfd, SO_PEERCRED, raw poll). Plain wrappers, no protocol
 * logic; the contract is `NativeBinding` in src/native/types.ts.
 *
 * Hot-path calls return -errno; set-up calls throw an Error with `errno` and
 * `syscall` properties; bad arguments throw TypeError. Never crash on input.
 */
#include <node_api.h>
#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_SEND_FDS 1024
#define MAX_IOV 16
#define SCM_MAX_FD 253 /* Linux's per-message SCM_RIGHTS limit (kernel-only header) */
#define RECV_STACK_FDS (MAX_SEND_FDS + 8)
#define MAX_SAFE_INT 9007199254740991.0
#define POLL_EVENTS (UV_READABLE | UV_WRITABLE | UV_DISCONNECT | UV_PRIORITIZED)
#define RETRY(expr) ({ __typeof__(expr) r_; do r_ = (expr); while (r_ < 0 && errno == EINTR); r_; })

/* Tell our wrapped objects apart from anyone else's (and from each other). */
static const napi_type_tag MAPPING_TAG = {0x7666696f75736572ULL, 0x6d6d61702d746167ULL};
static const napi_type_tag POLLER_TAG = {0x7666696f75736572ULL, 0x706f6c6c2d746167ULL};

/* ---- Errors --------------------------------------------------------------- */

/* A Node-API call failed: make sure some JS exception is pending. */
static napi_value fail(napi_env env) {
  const napi_extended_error_info *info = NULL;
  bool pending = false;
  char msg[128];

  napi_get_last_error_info(env, &info);
  snprintf(msg, sizeof msg, "Node-API call failed: %s",
           info && info->error_message ? info->error_message : "unknown");
  napi_is_exception_pending(env, &pending);
  if (!pending) napi_throw_error(env, NULL, msg);
  return NULL;
}

#define TRY(call) do { if ((call) != napi_ok) return fail(env); } while (0)

/* Throws `Error("<syscall>: <strerror>")` with `errno` and `syscall` set. */
static napi_value throw_errno(napi_env env, const char *syscall, int err) {
  napi_value text, error, value;
  char msg[160];

  snprintf(msg, sizeof msg, "%s: %s", syscall, strerror(err));
  TRY(napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text));
  TRY(napi_create_error(env, NULL, text, &error));
  TRY(napi_create_int32(env, err, &value));
  TRY(napi_set_named_property(env, error, "errno", value));
  TRY(napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &value));
  TRY(napi_set_named_property(env, error, "syscall", value));
  napi_throw(env, error);
  return NULL;
}

static napi_value throw_type(napi_env env, const char *fmt, ...) {
  char msg[160];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  napi_throw_type_error(env, NULL, msg);
  return NULL;
}

/* ---- Arguments and results ------------------------------------------------ */

/* Fetches up to `size` arguments (and `this`); at least `need` must be given. */
static bool get_args(napi_env env, napi_callback_info info, napi_value *argv, size_t size,
                     size_t need, napi_value *self) {
  size_t argc = size;

  if (napi_get_cb_info(env, info, &argc, argv, self, NULL) != napi_ok) return fail(env), false;
  if (argc < need) return throw_type(env, "expected %zu arguments, got %zu", need, argc), false;
  return true;
}

static bool is_type(napi_env env, napi_value v, napi_valuetype type) {
  napi_valuetype actual;
  return napi_typeof(env, v, &actual) == napi_ok && actual == type;
}

/* An integral number in [min, max]. */
static bool arg_number(napi_env env, napi_value v, const char *what, double min, double max,
                       double *out) {
  if (is_type(env, v, napi_number) && napi_get_value_double(env, v, out) == napi_ok &&
      *out >= min && *out <= max && *out == (double)(int64_t)*out)
    return true;
  return throw_type(env, "%s must be an integer in [%.0f, %.0f]", what, min, max), false;
}

static bool arg_int(napi_env env, napi_value v, const char *what, int *out) {
  double d;
  if (!arg_number(env, v, what, INT32_MIN, INT32_MAX, &d)) return false;
  return *out = (int)d, true;
}

static bool arg_u64(napi_env env, napi_value v, const char *what, uint64_t *out) {
  double d;
  if (!arg_number(env, v, what, 0, MAX_SAFE_INT, &d)) return false;
  return *out = (uint64_t)d, true;
}

/* A Uint8Array or Int32Array (a detached one has data NULL, length 0). */
static bool arg_typed(napi_env env, napi_value v, const char *what, napi_typedarray_type type,
                      void **data, size_t *len) {
  napi_typedarray_type actual;
  bool is = false;

  if (napi_is_typedarray(env, v, &is) == napi_ok && is &&
      napi_get_typedarray_info(env, v, &actual, len, data, NULL, NULL) == napi_ok &&
      actual == type)
    return true;
  return throw_type(env, "%s must be a%s", what,
                    type == napi_uint8_array ? " Uint8Array" : "n Int32Array"), false;
}

/* A non-empty string without NUL bytes, shorter than `cap` bytes. */
static bool arg_string(napi_env env, napi_value v, const char *what, char *buf, size_t cap) {
  size_t len;

  if (!is_type(env, v, napi_string) || napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok)
    return throw_type(env, "%s must be a string", what), false;
  if (len == 0 || len >= cap) return throw_type(env, "%s must be 1 to %zu bytes", what, cap - 1), false;
  napi_get_value_string_utf8(env, v, buf, cap, &len);
  if (strlen(buf) != len) return throw_type(env, "%s must not contain NUL bytes", what), false;
  return true;
}

static bool arg_arraybuffer(napi_env env, napi_value v) {
  bool is = false;
  if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) return true;
  return throw_type(env, "buffer must be an ArrayBuffer"), false;
}

/* Parses `(fd, ...)` with exactly `n` arguments. */
static bool fd_args(napi_env env, napi_callback_info info, napi_value *argv, size_t n, int *fd) {
  return get_args(env, info, argv, n, n, NULL) && arg_int(env, argv[0], "fd", fd);
}

/* Parses `(fd)`. */
static bool one_fd(napi_env env, napi_callback_info info, int *fd) {
  napi_value argv[1];
  return fd_args(env, info, argv, 1, fd);
}

/* Parses `(fd, buf)` with `buf` a Uint8Array. */
static bool fd_buf(napi_env env, napi_callback_info info, int *fd, void **data, size_t *len) {
  napi_value argv[2];
  return fd_args(env, info, argv, 2, fd) &&
         arg_typed(env, argv[1], "buf", napi_uint8_array, data, len);
}

static napi_value ret_int(napi_env env, int64_t n) {
  napi_value v;
  return napi_create_int64(env, n, &v) == napi_ok ? v : fail(env);
}

static napi_value ret_bool(napi_env env, bool b) {
  napi_value v;
  return napi_get_boolean(env, b, &v) == napi_ok ? v : fail(env);
}

/* A syscall's result, or -errno. Call right after the syscall. */
static napi_value ret_sys(napi_env env, int64_t r) { return ret_int(env, r < 0 ? -errno : r); }

/* A new fd, or a thrown error. */
static napi_value ret_fd(napi_env env, int fd, const char *syscall) {
  return fd < 0 ? throw_errno(env, syscall, errno) : ret_int(env, fd);
}

static bool set_int(napi_env env, napi_value obj, const char *name, int64_t value) {
  napi_value v;
  return napi_create_int64(env, value, &v) == napi_ok &&
         napi_set_named_property(env, obj, name, v) == napi_ok;
}

/* ---- Sockets -------------------------------------------------------------- */

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
  int fd;
  if (!one_fd(env, info, &fd)) return NULL;
  return ret_sys(env, RETRY(accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)));
}

static napi_value js_socket_pair(napi_env env, napi_callback_info info) {
  napi_value pair, a, b;
  int sv[2];

  (void)info;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
    return throw_errno(env, "socketpair", errno);
  if (napi_create_array_with_length(env, 2, &pair) != napi_ok ||
      napi_create_int32(env, sv[0], &a) != napi_ok || napi_create_int32(env, sv[1], &b) != napi_ok ||
      napi_set_element(env, pair, 0, a) != napi_ok || napi_set_element(env, pair, 1, b) != napi_ok) {
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

/* Moves every received fd into meta[2..], closing those that do not fit. */
static void take_fds(struct msghdr *msg, int32_t *meta, size_t room) {
  size_t count = 0;
  int32_t flags = 0;

  for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0))
      continue; /* e.g. SCM_CREDENTIALS: nothing to close */
    for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (count < room) meta[2 + count++] = fd;
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
  if (n >= 0) take_fds(&msg, meta, room);
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

/* ---- Files, memfd, eventfd, ioctl ----------------------------------------- */

static napi_value js_close(napi_env env, napi_callback_info info) {
  int fd;
  if (!one_fd(env, info, &fd)) return NULL;
  return ret_sys(env, close(fd)); /* never retried: Linux frees the fd even on EINTR */
}

static napi_value js_dup(napi_env env, napi_callback_info info) {
  int fd;
  if (!one_fd(env, info, &fd)) return NULL;
  return ret_sys(env, fcntl(fd, F_DUPFD_CLOEXEC, 0));
}

static napi_value js_read(napi_env env, napi_callback_info info) {
  void *data;
  size_t len;
  int fd;

  if (!fd_buf(env, info, &fd, &data, &len)) return NULL;
  if (len == 0) return throw_type(env, "buf must not be empty");
  return ret_sys(env, RETRY(read(fd, data, len)));
}

static napi_value js_write(napi_env env, napi_callback_info info) {
  void *data;
  size_t len;
  int fd;

  if (!fd_buf(env, info, &fd, &data, &len)) return NULL;
  return ret_sys(env, RETRY(write(fd, data, len)));
}

static napi_value js_fstat(napi_env env, napi_callback_info info) {
  struct stat st;
  napi_value obj;
  int fd;

  if (!one_fd(env, info, &fd)) return NULL;
  if (fstat(fd, &st) < 0) return throw_errno(env, "fstat", errno);
  TRY(napi_create_object(env, &obj));
  if (!set_int(env, obj, "size", st.st_size) || !set_int(env, obj, "mode", st.st_mode) ||
      !set_int(env, obj, "blksize", st.st_blksize))
    return fail(env);
  return obj;
}

static napi_value js_memfd_create(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  char name[250]; /* the kernel takes up to 249 bytes */
  int flags;

  if (!get_args(env, info, argv, 2, 2, NULL) || !arg_string(env, argv[0], "name", name, sizeof name) ||
      !arg_int(env, argv[1], "flags", &flags))
    return NULL;
  return ret_fd(env, memfd_create(name, (unsigned)flags | MFD_CLOEXEC), "memfd_create");
}

static napi_value js_ftruncate(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint64_t size;
  int fd;

  if (!fd_args(env, info, argv, 2, &fd) || !arg_u64(env, argv[1], "size", &size)) return NULL;
  return ftruncate(fd, (off_t)size) < 0 ? throw_errno(env, "ftruncate", errno) : NULL;
}

static napi_value js_eventfd(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  double initval;
  int flags;

  if (!get_args(env, info, argv, 2, 2, NULL) ||
      !arg_number(env, argv[0], "initval", 0, UINT32_MAX, &initval) ||
      !arg_int(env, argv[1], "flags", &flags))
    return NULL;
  return ret_fd(env, eventfd((unsigned)initval, flags | EFD_CLOEXEC | EFD_NONBLOCK), "eventfd");
}

static napi_value js_eventfd_read(napi_env env, napi_callback_info info) {
  uint64_t value;
  napi_value v;
  ssize_t n;
  int fd;

  if (!one_fd(env, info, &fd)) return NULL;
  if ((n = RETRY(read(fd, &value, sizeof value))) < 0) return ret_int(env, -errno);
  if (n != sizeof value) return ret_int(env, -EINVAL); /* not an eventfd */
  TRY(napi_create_bigint_uint64(env, value, &v));
  return v;
}

static napi_value js_eventfd_write(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint64_t value;
  bool lossless = false;
  int fd;

  if (!fd_args(env, info, argv, 2, &fd)) return NULL;
  if (!is_type(env, argv[1], napi_bigint) ||
      napi_get_value_bigint_uint64(env, argv[1], &value, &lossless) != napi_ok || !lossless)
    return throw_type(env, "value must be a bigint in [0, 2^64 - 1]");
  return ret_int(env, RETRY(write(fd, &value, sizeof value)) < 0 ? -errno : 0);
}

static napi_value js_ioctl(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  uint64_t request;
  unsigned long arg;
  void *data;
  size_t len;
  double num;
  bool is = false;
  int fd;

  if (!fd_args(env, info, argv, 3, &fd) || !arg_u64(env, argv[1], "request", &request)) return NULL;
  if (napi_is_typedarray(env, argv[2], &is) == napi_ok && is) {
    if (!arg_typed(env, argv[2], "arg", napi_uint8_array, &data, &len)) return NULL;
    arg = (unsigned long)data;
  } else {
    if (!arg_number(env, argv[2], "arg", -MAX_SAFE_INT, MAX_SAFE_INT, &num)) return NULL;
    arg = (unsigned long)(int64_t)num;
  }
  return ret_sys(env, ioctl(fd, (unsigned long)request, arg));
}

/* ---- mmap ------------------------------------------------------------------
 * A mapping is an external ArrayBuffer, type-tagged and napi_wrap'ed with a
 * `mapping_t`. Node 20 runs the buffer's finalizer on the JS thread (from a
 * SetImmediate) once V8 releases the backing store: after GC, after a detach,
 * at environment teardown, or synchronously when creating the buffer fails.
 * The finalizer owns `mapping_t` and munmaps unless munmap() did. munmap()
 * only dereferences the struct while the buffer is attached, which proves the
 * finalizer has not run: no use after free, no double munmap.
 */

typedef struct { void *addr; size_t len; bool unmapped; } mapping_t;

static void mapping_finalize(napi_env env, void *data, void *hint) {
  mapping_t *m = hint;
  (void)env, (void)data;
  if (!m->unmapped) munmap(m->addr, m->len);
  free(m);
}

static napi_value js_mmap(napi_env env, napi_callback_info info) {
  napi_value argv[4], ab;
  uint64_t offset, length;
  mapping_t *m;
  int fd, prot;

  if (!fd_args(env, info, argv, 4, &fd) || !arg_u64(env, argv[1], "offset", &offset) ||
      !arg_u64(env, argv[2], "length", &length) || !arg_int(env, argv[3], "prot", &prot))
    return NULL;
  if (length == 0) return throw_type(env, "length must not be 0");
  if (prot == 0 || (prot & ~(PROT_READ | PROT_WRITE)))
    return throw_type(env, "prot must be PROT_READ, PROT_WRITE or both");
  if (!(m = calloc(1, sizeof *m))) return throw_errno(env, "mmap", ENOMEM);
  m->len = length;
  if ((m->addr = mmap(NULL, length, prot, MAP_SHARED, fd, (off_t)offset)) == MAP_FAILED) {
    int err = errno;
    free(m);
    return throw_errno(env, "mmap", err);
  }
  /* From here on the finalizer owns `m`, even if this fails (> 4 GiB in Node 20). */
  TRY(napi_create_external_arraybuffer(env, m->addr, length, mapping_finalize, m, &ab));
  TRY(napi_type_tag_object(env, ab, &MAPPING_TAG));
  TRY(napi_wrap(env, ab, m, NULL, NULL, NULL));
  return ab;
}

static napi_value js_munmap(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  bool detached = false, tagged = false;
  mapping_t *m;

  if (!get_args(env, info, argv, 1, 1, NULL) || !arg_arraybuffer(env, argv[0])) return NULL;
  TRY(napi_is_detached_arraybuffer(env, argv[0], &detached));
  if (detached) return ret_bool(env, false);
  TRY(napi_check_object_type_tag(env, argv[0], &MAPPING_TAG, &tagged));
  if (!tagged || napi_unwrap(env, argv[0], (void **)&m) != napi_ok) return ret_bool(env, false);
  void *addr = m->addr;
  size_t len = m->len;
  m->unmapped = true;
  if (napi_detach_arraybuffer(env, argv[0]) != napi_ok) {
    m->unmapped = false; /* still attached, so `m` is still alive */
    return fail(env);
  }
  munmap(addr, len); /* `m` may be freed from now on */
  return ret_bool(env, true);
}

static napi_value js_msync(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  void *data;
  size_t len;

  if (!get_args(env, info, argv, 1, 1, NULL) || !arg_arraybuffer(env, argv[0])) return NULL;
  TRY(napi_get_arraybuffer_info(env, argv[0], &data, &len));
  return len > 0 && msync(data, len, MS_SYNC) < 0 ? throw_errno(env, "msync", errno) : NULL;
}

/* ---- Poller ----------------------------------------------------------------
 * A uv_poll_t whose callback runs through napi_make_callback. `self` is a
 * weak reference to the JS object, made strong while started. `callback` is
 * weak too: the object keeps the function alive through a symbol-keyed
 * property, so a callback closing over its poller is a collectable cycle.
 * Closing (close(), the GC finalizer, or environment teardown) releases the
 * JS side and uv_close()s; the struct is freed once the handle is closed and
 * the object no longer wraps it.
 *
 * Teardown: a worker's addons are unloaded right after its environment, so
 * a close callback left pending then would jump into unmapped code. An async
 * cleanup hook closes every open poller and keeps the environment (and this
 * library) alive until the last close callback has run.
 */

typedef struct poller poller_t;

typedef struct {
  poller_t *open;                           /* pollers not closed yet */
  size_t closing;                           /* close callbacks pending */
  napi_async_cleanup_hook_handle teardown;  /* set once teardown began */
} addon_t;

struct poller {
  uv_poll_t handle;
  napi_env env;
  addon_t *addon;
  poller_t *prev, *next; /* in addon->open until closed */
  napi_ref self, callback;
  napi_async_context async;
  bool started, closed, handle_closed, wrapped;
};

static void addon_check_done(addon_t *a) {
  if (a->teardown && a->closing == 0) {
    napi_remove_async_cleanup_hook(a->teardown);
    a->teardown = NULL;
  }
}

static void poller_set_started(poller_t *p, bool started) {
  if (p->started == started) return;
  p->started = started;
  if (started) napi_reference_ref(p->env, p->self, NULL);
  else napi_reference_unref(p->env, p->self, NULL);
}

static void poller_on_close(uv_handle_t *handle) {
  poller_t *p = handle->data;
  addon_t *a = p->addon;

  p->handle_closed = true;
  a->closing--;
  if (!p->wrapped) free(p);
  addon_check_done(a);
}

static void poller_unlink(poller_t *p) {
  if (p->prev) p->prev->next = p->next;
  else p->addon->open = p->next;
  if (p->next) p->next->prev = p->prev;
}

/* Releases the JS side and closes the handle, once. */
static void poller_release(poller_t *p) {
  if (p->closed) return;
  p->closed = true;
  poller_unlink(p);
  if (p->self) napi_delete_reference(p->env, p->self);
  if (p->callback) napi_delete_reference(p->env, p->callback);
  if (p->async) napi_async_destroy(p->env, p->async);
  p->addon->closing++;
  uv_close((uv_handle_t *)&p->handle, poller_on_close);
}

static void poller_finalize(napi_env env, void *data, void *hint) {
  poller_t *p = data;

  (void)env, (void)hint;
  p->wrapped = false;
  poller_release(p);
  if (p->handle_closed) free(p);
}

static void addon_teardown(napi_async_cleanup_hook_handle handle, void *data) {
  addon_t *a = data;

  a->teardown = handle;
  while (a->open) poller_release(a->open);
  addon_check_done(a);
}

static void poller_on_event(uv_poll_t *handle, int status, int events) {
  poller_t *p = handle->data;
  napi_env env = p->env;
  napi_value recv = NULL, fn = NULL, argv[2], error;
  napi_handle_scope scope;
  bool pending = false;

  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_get_reference_value(env, p->self, &recv);
  napi_get_reference_value(env, p->callback, &fn);
  if (status < 0) poller_set_started(p, false); /* libuv stopped the handle */
  /* The callback may close `p` (freed only later, by libuv); not used after it. */
  if (recv && fn && napi_create_int32(env, status, &argv[0]) == napi_ok &&
      napi_create_int32(env, events, &argv[1]) == napi_ok)
    napi_make_callback(env, p->async, recv, fn, 2, argv, NULL);
  /* napi_make_callback catches a throw and leaves it pending: left there, it
   * would be rethrown by whatever addon call JS makes next. Report it now. */
  napi_is_exception_pending(env, &pending);
  if (pending && napi_get_and_clear_last_exception(env, &error) == napi_ok)
    napi_fatal_exception(env, error);
  napi_close_handle_scope(env, scope);
}

/* Keeps `fn` alive as long as `self` through a hidden symbol property. */
static bool poller_keep(napi_env env, napi_value self, napi_value fn) {
  napi_property_descriptor desc = {NULL, NULL, NULL, NULL, NULL, fn, napi_default, NULL};
  return napi_create_symbol(env, NULL, &desc.name) == napi_ok &&
         napi_define_properties(env, self, 1, &desc) == napi_ok;
}

/* Links a new poller into the addon's open list. */
static poller_t *poller_alloc(napi_env env) {
  addon_t *a = NULL;
  poller_t *p;

  if (napi_get_instance_data(env, (void **)&a) != napi_ok || !a || !(p = calloc(1, sizeof *p)))
    return NULL;
  p->env = env;
  p->addon = a;
  p->handle.data = p;
  if ((p->next = a->open)) a->open->prev = p;
  a->open = p;
  return p;
}

static napi_value poller_new(napi_env env, napi_callback_info info) {
  napi_value argv[2], self, target, name;
  uv_loop_t *loop;
  poller_t *p;
  int fd, r;

  TRY(napi_get_new_target(env, info, &target));
  if (!target) return throw_type(env, "Poller must be called with new");
  if (!get_args(env, info, argv, 2, 2, &self) || !arg_int(env, argv[0], "fd", &fd)) return NULL;
  if (!is_type(env, argv[1], napi_function)) return throw_type(env, "callback must be a function");
  TRY(napi_get_uv_event_loop(env, &loop));
  if (!(p = poller_alloc(env))) return throw_errno(env, "calloc", ENOMEM);
  if ((r = uv_poll_init(loop, &p->handle, fd)) < 0) {
    poller_unlink(p); /* never a uv handle */
    free(p);
    return throw_errno(env, "uv_poll_init", -r);
  }
  if (napi_create_reference(env, self, 0, &p->self) != napi_ok ||
      napi_create_reference(env, argv[1], 0, &p->callback) != napi_ok ||
      !poller_keep(env, self, argv[1]) ||
      napi_create_string_utf8(env, "vfio-user:poll", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, self, name, &p->async) != napi_ok ||
      napi_type_tag_object(env, self, &POLLER_TAG) != napi_ok ||
      napi_wrap(env, self, p, poller_finalize, NULL, NULL) != napi_ok) {
    fail(env);
    poller_release(p);
    return NULL;
  }
  p->wrapped = true;
  return self;
}

/* Gets `this` and checks it is a Poller (TypeError otherwise). */
static bool poller_this(napi_env env, napi_callback_info info, napi_value *argv, size_t n,
                        napi_value *self) {
  bool tagged = false;

  if (!get_args(env, info, argv, n, n, self)) return false;
  if (napi_check_object_type_tag(env, *self, &POLLER_TAG, &tagged) == napi_ok && tagged) return true;
  return throw_type(env, "this is not a Poller"), false;
}

/* The open Poller behind `this`, or NULL with an exception pending. */
static poller_t *poller_open(napi_env env, napi_callback_info info, napi_value *argv, size_t n) {
  napi_value self;
  poller_t *p;

  if (!poller_this(env, info, argv, n, &self)) return NULL;
  if (napi_unwrap(env, self, (void **)&p) == napi_ok) return p;
  napi_throw_error(env, NULL, "Poller is closed");
  return NULL;
}

static napi_value poller_stop(napi_env env, napi_callback_info info) {
  poller_t *p = poller_open(env, info, NULL, 0);

  if (p) {
    uv_poll_stop(&p->handle);
    poller_set_started(p, false);
  }
  return NULL;
}

static napi_value poller_start(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  poller_t *p = poller_open(env, info, argv, 1);
  int events, r;

  if (!p || !arg_int(env, argv[0], "events", &events)) return NULL;
  if (events & ~POLL_EVENTS) return throw_type(env, "events must be a mask of UV_* poll events");
  if (events == 0) return poller_stop(env, info);
  if ((r = uv_poll_start(&p->handle, events, poller_on_event)) < 0)
    return throw_errno(env, "uv_poll_start", -r);
  poller_set_started(p, true);
  return NULL;
}

static napi_value poller_close(napi_env env, napi_callback_info info) {
  napi_value self;
  poller_t *p;

  if (!poller_this(env, info, NULL, 0, &self)) return NULL;
  if (napi_remove_wrap(env, self, (void **)&p) != napi_ok) return NULL; /* already closed */
  p->wrapped = false;
  poller_release(p);
  return NULL;
}

/* ---- Module --------------------------------------------------------------- */

static napi_value make_constants(napi_env env) {
  napi_value c;

  TRY(napi_create_object(env, &c));
  if (!set_int(env, c, "UV_READABLE", UV_READABLE) || !set_int(env, c, "UV_WRITABLE", UV_WRITABLE) ||
      !set_int(env, c, "UV_DISCONNECT", UV_DISCONNECT) || !set_int(env, c, "PROT_READ", PROT_READ) ||
      !set_int(env, c, "PROT_WRITE", PROT_WRITE) ||
      !set_int(env, c, "MFD_ALLOW_SEALING", MFD_ALLOW_SEALING) ||
      !set_int(env, c, "EFD_SEMAPHORE", EFD_SEMAPHORE) ||
      !set_int(env, c, "PAGE_SIZE", sysconf(_SC_PAGESIZE)) ||
      !set_int(env, c, "MAX_SEND_FDS", MAX_SEND_FDS) || !set_int(env, c, "SCM_MAX_FD", SCM_MAX_FD))
    return fail(env);
  TRY(napi_object_freeze(env, c));
  return c;
}

static napi_value make_poller_class(napi_env env) {
  napi_property_descriptor methods[] = {
      {"start", NULL, poller_start, NULL, NULL, NULL, napi_default_method, NULL},
      {"stop", NULL, poller_stop, NULL, NULL, NULL, napi_default_method, NULL},
      {"close", NULL, poller_close, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_value cls;

  TRY(napi_define_class(env, "Poller", NAPI_AUTO_LENGTH, poller_new, NULL, 3, methods, &cls));
  return cls;
}

static void addon_finalize(napi_env env, void *data, void *hint) {
  (void)env, (void)hint;
  free(data);
}

NAPI_MODULE_INIT() {
  static const struct { const char *name; napi_callback fn; } fns[] = {
      {"unixSocket", js_unix_socket}, {"bind", js_bind}, {"listen", js_listen},
      {"accept", js_accept}, {"connect", js_connect}, {"socketPair", js_socket_pair},
      {"sendmsg", js_sendmsg}, {"recvmsg", js_recvmsg}, {"shutdown", js_shutdown},
      {"peerCred", js_peer_cred}, {"close", js_close}, {"dup", js_dup},
      {"read", js_read}, {"write", js_write}, {"fstat", js_fstat},
      {"memfdCreate", js_memfd_create}, {"ftruncate", js_ftruncate}, {"eventfd", js_eventfd},
      {"eventfdRead", js_eventfd_read}, {"eventfdWrite", js_eventfd_write}, {"mmap", js_mmap},
      {"munmap", js_munmap}, {"msync", js_msync}, {"ioctl", js_ioctl},
  };
  addon_t *addon = calloc(1, sizeof *addon);
  napi_value v;

  if (!addon) return throw_errno(env, "calloc", ENOMEM);
  if (napi_set_instance_data(env, addon, addon_finalize, NULL) != napi_ok) {
    free(addon);
    return fail(env);
  }
  TRY(napi_add_async_cleanup_hook(env, addon_teardown, addon, NULL));
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    TRY(napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &v));
    TRY(napi_set_named_property(env, exports, fns[i].name, v));
  }
  if (!(v = make_poller_class(env))) return NULL;
  TRY(napi_set_named_property(env, exports, "Poller", v));
  if (!(v = make_constants(env))) return NULL;
  TRY(napi_set_named_property(env, exports, "constants", v));
  return exports;
}
