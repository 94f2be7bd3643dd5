/*
 * common.c: the helpers declared in common.h, shared by every file of the
 * addon: errors, argument parsing, results, export registration.
 */
#include "common.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- Errors --------------------------------------------------------------- */

/* A Node-API call failed: make sure some JS exception is pending. */
napi_value fail(napi_env env) {
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

/* Throws `Error("<syscall>: <strerror>")` with `errno` and `syscall` set. */
napi_value throw_errno(napi_env env, const char *syscall, int err) {
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

napi_value throw_type(napi_env env, const char *fmt, ...) {
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
bool get_args(napi_env env, napi_callback_info info, napi_value *argv, size_t size, size_t need,
              napi_value *self) {
  size_t argc = size;

  if (napi_get_cb_info(env, info, &argc, argv, self, NULL) != napi_ok) return fail(env), false;
  if (argc < need) return throw_type(env, "expected %zu arguments, got %zu", need, argc), false;
  return true;
}

bool is_type(napi_env env, napi_value v, napi_valuetype type) {
  napi_valuetype actual;
  return napi_typeof(env, v, &actual) == napi_ok && actual == type;
}

/* An integral number in [min, max]. */
bool arg_number(napi_env env, napi_value v, const char *what, double min, double max,
                double *out) {
  if (is_type(env, v, napi_number) && napi_get_value_double(env, v, out) == napi_ok &&
      *out >= min && *out <= max && *out == (double)(int64_t)*out)
    return true;
  return throw_type(env, "%s must be an integer in [%.0f, %.0f]", what, min, max), false;
}

bool arg_int(napi_env env, napi_value v, const char *what, int *out) {
  double d;
  if (!arg_number(env, v, what, INT32_MIN, INT32_MAX, &d)) return false;
  return *out = (int)d, true;
}

bool arg_u64(napi_env env, napi_value v, const char *what, uint64_t *out) {
  double d;
  if (!arg_number(env, v, what, 0, MAX_SAFE_INT, &d)) return false;
  return *out = (uint64_t)d, true;
}

/* A Uint8Array or Int32Array (a detached one has data NULL, length 0). */
bool arg_typed(napi_env env, napi_value v, const char *what, napi_typedarray_type type,
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
bool arg_string(napi_env env, napi_value v, const char *what, char *buf, size_t cap) {
  size_t len;

  if (!is_type(env, v, napi_string) || napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok)
    return throw_type(env, "%s must be a string", what), false;
  if (len == 0 || len >= cap) return throw_type(env, "%s must be 1 to %zu bytes", what, cap - 1), false;
  napi_get_value_string_utf8(env, v, buf, cap, &len);
  if (strlen(buf) != len) return throw_type(env, "%s must not contain NUL bytes", what), false;
  return true;
}

bool arg_arraybuffer(napi_env env, napi_value v) {
  bool is = false;
  if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) return true;
  return throw_type(env, "buffer must be an ArrayBuffer"), false;
}

/* Parses `(fd, ...)` with exactly `n` arguments. */
bool fd_args(napi_env env, napi_callback_info info, napi_value *argv, size_t n, int *fd) {
  return get_args(env, info, argv, n, n, NULL) && arg_int(env, argv[0], "fd", fd);
}

/* Parses `(fd)`. */
bool one_fd(napi_env env, napi_callback_info info, int *fd) {
  napi_value argv[1];
  return fd_args(env, info, argv, 1, fd);
}

/* Parses `(fd, buf)` with `buf` a Uint8Array. */
bool fd_buf(napi_env env, napi_callback_info info, int *fd, void **data, size_t *len) {
  napi_value argv[2];
  return fd_args(env, info, argv, 2, fd) &&
         arg_typed(env, argv[1], "buf", napi_uint8_array, data, len);
}

napi_value ret_int(napi_env env, int64_t n) {
  napi_value v;
  return napi_create_int64(env, n, &v) == napi_ok ? v : fail(env);
}

napi_value ret_bool(napi_env env, bool b) {
  napi_value v;
  return napi_get_boolean(env, b, &v) == napi_ok ? v : fail(env);
}

/* A syscall's result, or -errno. Call right after the syscall. */
napi_value ret_sys(napi_env env, int64_t r) { return ret_int(env, r < 0 ? -errno : r); }

/* A new fd, or a thrown error. */
napi_value ret_fd(napi_env env, int fd, const char *syscall) {
  if (fd < 0) return throw_errno(env, syscall, errno);
  fd_own(env, fd);
  return ret_int(env, fd);
}

bool set_int(napi_env env, napi_value obj, const char *name, int64_t value) {
  napi_value v;
  return napi_create_int64(env, value, &v) == napi_ok &&
         napi_set_named_property(env, obj, name, v) == napi_ok;
}

/* ---- Registration --------------------------------------------------------- */

bool export_fns(napi_env env, napi_value exports, const export_fn *fns, size_t n) {
  napi_value v;

  for (size_t i = 0; i < n; i++) {
    if (napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &v) != napi_ok ||
        napi_set_named_property(env, exports, fns[i].name, v) != napi_ok)
      return fail(env), false;
  }
  return true;
}
