/*
 * memory.c: shared memory. memfd_create, ftruncate and fstat; file seals (so
 * a server can stop a client from shrinking a memfd the server has mapped:
 * touching a page past the new end would be SIGBUS); mmap, munmap, msync.
 */
#include "common.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Tells our mappings apart from anyone else's buffers (POLLER_TAG in poller.c differs). */
static const napi_type_tag MAPPING_TAG = {0x7666696f75736572ULL, 0x6d6d61702d746167ULL};

/* ---- Files and seals ------------------------------------------------------ */

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

/* `fcntl(F_GET_SEALS)`: the seals, or -errno. */
static napi_value js_get_seals(napi_env env, napi_callback_info info) {
  int fd;
  if (!one_fd(env, info, &fd)) return NULL;
  return ret_sys(env, fcntl(fd, F_GET_SEALS));
}

/* `fcntl(F_ADD_SEALS)`: 0, or -errno (-EPERM once F_SEAL_SEAL is set). */
static napi_value js_add_seals(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd, seals;

  if (!fd_args(env, info, argv, 2, &fd) || !arg_int(env, argv[1], "seals", &seals)) return NULL;
  return ret_sys(env, fcntl(fd, F_ADD_SEALS, seals));
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

bool memory_init(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
      {"fstat", js_fstat}, {"memfdCreate", js_memfd_create}, {"ftruncate", js_ftruncate},
      {"getSeals", js_get_seals}, {"addSeals", js_add_seals}, {"mmap", js_mmap},
      {"munmap", js_munmap}, {"msync", js_msync},
  };
  return EXPORT_FNS(env, exports, fns);
}
