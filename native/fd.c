/*
 * fd.c: plain file descriptors. close, dup, read, write; eventfd counters;
 * ioctl; which environment owns each fd the addon handed out (common.h). Also prctl(PR_SET_PDEATHSIG), for child processes that must not
 * outlive their parent.
 */
#include "common.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <unistd.h>

/* ---- Ownership (see common.h) ----------------------------------------------
 * owners[fd] is the environment that owns fd, or NULL. One table for the
 * process (fd numbers are process-wide), guarded by a mutex: an fd closed by
 * one thread and reused by another is released before close() and recorded
 * again only once the new owner got it, so teardown never closes a number
 * that someone else has just been given. */

static napi_env *owners;
static size_t owners_cap;
static pthread_mutex_t owners_lock = PTHREAD_MUTEX_INITIALIZER;

void fd_own(napi_env env, int fd) {
  if (fd < 0) return;
  pthread_mutex_lock(&owners_lock);
  if ((size_t)fd >= owners_cap) {
    size_t cap = owners_cap ? owners_cap : 256;
    while (cap <= (size_t)fd) cap *= 2;
    napi_env *grown = realloc(owners, cap * sizeof *owners);
    if (grown) {
      memset(grown + owners_cap, 0, (cap - owners_cap) * sizeof *owners);
      owners = grown;
      owners_cap = cap;
    }
  }
  if ((size_t)fd < owners_cap) owners[fd] = env; /* else untracked: closed by JS only */
  pthread_mutex_unlock(&owners_lock);
}

void fd_disown(int fd) {
  if (fd < 0) return;
  pthread_mutex_lock(&owners_lock);
  if ((size_t)fd < owners_cap) owners[fd] = NULL;
  pthread_mutex_unlock(&owners_lock);
}

size_t fd_close_owned(napi_env env) {
  size_t closed = 0;
  pthread_mutex_lock(&owners_lock);
  for (size_t fd = 0; fd < owners_cap; fd++) {
    if (owners[fd] != env) continue;
    owners[fd] = NULL;
    close((int)fd); /* still ours: nobody else can hold this number while it is open */
    closed++;
  }
  pthread_mutex_unlock(&owners_lock);
  return closed;
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  int fd;
  if (!one_fd(env, info, &fd)) return NULL;
  fd_disown(fd);
  return ret_sys(env, close(fd)); /* never retried: Linux frees the fd even on EINTR */
}

static napi_value js_dup(napi_env env, napi_callback_info info) {
  int fd, r;
  if (!one_fd(env, info, &fd)) return NULL;
  r = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (r < 0) return ret_int(env, -errno);
  fd_own(env, r);
  return ret_int(env, r);
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

/* setParentDeathSignal(sig): prctl(PR_SET_PDEATHSIG, sig); 0 or -errno. */
static napi_value js_set_parent_death_signal(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int sig;

  if (!get_args(env, info, argv, 1, 1, NULL) || !arg_int(env, argv[0], "signal", &sig)) return NULL;
  if (sig < 0 || sig >= NSIG) return throw_type(env, "signal %d is out of range", sig);
  return ret_sys(env, prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0UL, 0UL, 0UL));
}

bool fd_init(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
      {"close", js_close}, {"dup", js_dup}, {"read", js_read}, {"write", js_write},
      {"eventfd", js_eventfd}, {"eventfdRead", js_eventfd_read},
      {"eventfdWrite", js_eventfd_write}, {"ioctl", js_ioctl},
      {"setParentDeathSignal", js_set_parent_death_signal},
  };
  return EXPORT_FNS(env, exports, fns);
}
