/*
 * common.h: what every file of the addon shares. Error throwing, argument
 * parsing and result helpers (defined in common.c), a few limits, and the
 * registration function each file exports to addon.c.
 *
 * Hot-path calls return -errno; set-up calls throw an Error with `errno` and
 * `syscall` properties; bad arguments throw TypeError. Never crash on input.
 */
#ifndef VFIO_USER_NATIVE_COMMON_H
#define VFIO_USER_NATIVE_COMMON_H

#include <node_api.h>

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MAX_SEND_FDS 1024
#define SCM_MAX_FD 253 /* Linux's per-message SCM_RIGHTS limit (kernel-only header) */
#define MAX_SAFE_INT 9007199254740991.0
#define RETRY(expr) ({ __typeof__(expr) r_; do r_ = (expr); while (r_ < 0 && errno == EINTR); r_; })

/* ---- Errors --------------------------------------------------------------- */

/* A Node-API call failed: make sure some JS exception is pending. */
napi_value fail(napi_env env);

#define TRY(call) do { if ((call) != napi_ok) return fail(env); } while (0)

/* Throws `Error("<syscall>: <strerror>")` with `errno` and `syscall` set. */
napi_value throw_errno(napi_env env, const char *syscall, int err);

/* Throws a TypeError with a printf-style message. */
napi_value throw_type(napi_env env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- Arguments ------------------------------------------------------------ */

/* Fetches up to `size` arguments (and `this`); at least `need` must be given. */
bool get_args(napi_env env, napi_callback_info info, napi_value *argv, size_t size, size_t need,
              napi_value *self);

bool is_type(napi_env env, napi_value v, napi_valuetype type);

/* An integral number in [min, max]. */
bool arg_number(napi_env env, napi_value v, const char *what, double min, double max,
                double *out);
bool arg_int(napi_env env, napi_value v, const char *what, int *out);
bool arg_u64(napi_env env, napi_value v, const char *what, uint64_t *out);

/* A Uint8Array or Int32Array (a detached one has data NULL, length 0). */
bool arg_typed(napi_env env, napi_value v, const char *what, napi_typedarray_type type,
               void **data, size_t *len);

/* A non-empty string without NUL bytes, shorter than `cap` bytes. */
bool arg_string(napi_env env, napi_value v, const char *what, char *buf, size_t cap);

bool arg_arraybuffer(napi_env env, napi_value v);

/* Parses `(fd, ...)` with exactly `n` arguments. */
bool fd_args(napi_env env, napi_callback_info info, napi_value *argv, size_t n, int *fd);

/* Parses `(fd)`. */
bool one_fd(napi_env env, napi_callback_info info, int *fd);

/* Parses `(fd, buf)` with `buf` a Uint8Array. */
bool fd_buf(napi_env env, napi_callback_info info, int *fd, void **data, size_t *len);

/* ---- Results -------------------------------------------------------------- */

napi_value ret_int(napi_env env, int64_t n);
napi_value ret_bool(napi_env env, bool b);

/* A syscall's result, or -errno. Call right after the syscall. */
napi_value ret_sys(napi_env env, int64_t r);

/* A new fd, or a thrown error. */
napi_value ret_fd(napi_env env, int fd, const char *syscall);

bool set_int(napi_env env, napi_value obj, const char *name, int64_t value);

/* ---- Fd ownership (fd.c) -------------------------------------------------
 * Every fd the addon hands to JS (created, accepted, received, dup'ed) is
 * recorded as owned by the environment that got it, until close() releases it
 * (from whichever environment). At an environment's teardown (a worker thread
 * terminated or exiting) poller.c closes the fds it still owns, after closing
 * its pollers: fds are process-wide, so a dead worker's sockets, eventfds and
 * memfds would otherwise stay open, and its clients would never see EOF. */

/* Records `fd` (>= 0) as owned by `env`. */
void fd_own(napi_env env, int fd);

/* Forgets `fd`, whoever owns it (call before closing it). */
void fd_disown(int fd);

/* Closes every fd `env` still owns; returns how many. */
size_t fd_close_owned(napi_env env);

/* ---- Registration --------------------------------------------------------- */

typedef struct { const char *name; napi_callback fn; } export_fn;

/* Sets each of `fns` on `exports` as a function; false with an exception pending. */
bool export_fns(napi_env env, napi_value exports, const export_fn *fns, size_t n);

#define EXPORT_FNS(env, exports, fns) export_fns(env, exports, fns, sizeof fns / sizeof fns[0])

/* Each file's exports, set on `exports` by addon.c; false with an exception pending. */
bool socket_init(napi_env env, napi_value exports); /* socket.c */
bool fd_init(napi_env env, napi_value exports);     /* fd.c */
bool memory_init(napi_env env, napi_value exports); /* memory.c */
bool poller_init(napi_env env, napi_value exports); /* poller.c */

#endif
