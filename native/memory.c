/*
 * memory.c: shared memory. memfd_create, ftruncate and fstat; file seals (so
 * a server can stop a client from shrinking a memfd the server has mapped:
 * touching a page past the new end would be SIGBUS); mmap, munmap, msync;
 * and the SIGBUS guard over every mapping made here.
 *
 * SIGBUS guard. A peer may shrink a file we mapped (a client's unsealed DMA
 * fd); touching a page past the new end raises SIGBUS, which would kill the
 * process. Every mapping js_mmap makes is recorded in `guards`; a SIGBUS with
 * BUS_ADRERR inside one is repaired by mapping anonymous zero memory over the
 * faulting page (MAP_FIXED, same protection), marking the mapping faulted and
 * counting the fault in a shared page JS reads without a call (see
 * `sigbusCounterFd`); the access then completes (reads see zeros, writes are
 * lost) and the JS layer turns the mark into an error. Any other SIGBUS goes
 * to the handler that was installed before ours (V8 and Node install none for
 * SIGBUS on Linux; the default action kills the process as before).
 * The guard is process-wide (one table, one handler for every thread and
 * worker); the library pins itself in memory when it installs the handler,
 * so a worker that loaded it first and exits cannot leave the handler
 * pointing into unmapped code.
 */
#include "common.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- SIGBUS guard --------------------------------------------------------- */

#define GUARD_SLOTS 65536 /* mappings alive at once; mmap fails with ENOMEM beyond */

/* One guarded mapping; `len` 0 = free. Writers (the JS thread owning the mapping) clear `len`
 * first and set it last, so the handler never sees a half-written slot as live. */
typedef struct { _Atomic uintptr_t start; _Atomic size_t len; _Atomic int prot, faulted; } guard_t;

static guard_t guards[GUARD_SLOTS];
static _Atomic size_t guard_high;           /* slots in use are below this */
static _Atomic uint32_t *guard_counter;     /* faults repaired so far (a shared page) */
static int guard_counter_fd = -1;           /* memfd behind `guard_counter`, for JS to map */
static struct sigaction guard_previous;
static size_t guard_page;
static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;

/* Maps zeros over the page (or huge page) holding `addr`, inside [start, start + len). */
static bool guard_patch(uintptr_t start, size_t len, uintptr_t addr, int prot) {
  const size_t grains[] = {guard_page, (size_t)2 << 20, (size_t)1 << 30};
  for (size_t i = 0; i < sizeof grains / sizeof grains[0]; i++) {
    uintptr_t base = addr & ~(uintptr_t)(grains[i] - 1);
    if (base < start || base + grains[i] > start + len) continue;
    if (mmap((void *)base, grains[i], prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED)
      return true;
  }
  return false;
}

/* Hands a SIGBUS we do not own to whoever handled SIGBUS before us. */
static void guard_chain(int sig, siginfo_t *si, void *ctx) {
  if (guard_previous.sa_flags & SA_SIGINFO) {
    guard_previous.sa_sigaction(sig, si, ctx);
  } else if (guard_previous.sa_handler != SIG_DFL && guard_previous.sa_handler != SIG_IGN) {
    guard_previous.sa_handler(sig);
  } else {
    signal(sig, SIG_DFL); /* a fault re-executes and dies as it would have */
    if (si->si_code <= 0) raise(sig); /* sent by kill(): deliver it again */
  }
}

static void guard_handler(int sig, siginfo_t *si, void *ctx) {
  int saved = errno;
  uintptr_t addr = (uintptr_t)si->si_addr;
  size_t high = atomic_load(&guard_high);
  for (size_t i = 0; si->si_code == BUS_ADRERR && i < high; i++) {
    size_t len = atomic_load(&guards[i].len);
    uintptr_t start = atomic_load(&guards[i].start);
    if (len == 0 || addr < start || addr - start >= len || atomic_load(&guards[i].len) != len) continue;
    if (!guard_patch(start, len, addr, atomic_load(&guards[i].prot))) break;
    atomic_store(&guards[i].faulted, 1);
    atomic_fetch_add(guard_counter, 1);
    errno = saved;
    return;
  }
  errno = saved;
  guard_chain(sig, si, ctx);
}

/* Keeps this library mapped for the life of the process: the handler and `guards` must outlive
 * the environment that loaded it (Node unloads a worker's addons when the worker ends). */
static void guard_pin(void) {
  Dl_info self;
  if (dladdr((void *)guard_handler, &self) && self.dli_fname)
    dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE); /* a reference never dropped */
}

/* Installs the handler and the counter page once per process: 0 or an errno. */
static int guard_install(void) {
  static bool installed;
  struct sigaction sa;
  if (installed) return 0;
  guard_pin();
  guard_page = (size_t)sysconf(_SC_PAGESIZE);
  if (guard_counter_fd < 0) {
    int fd = memfd_create("vfio-user-sigbus-count", MFD_CLOEXEC);
    if (fd < 0) return errno;
    void *page = ftruncate(fd, (off_t)guard_page) < 0 ? MAP_FAILED
                 : mmap(NULL, guard_page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (page == MAP_FAILED) {
      int err = errno;
      close(fd);
      return err;
    }
    guard_counter = page;
    guard_counter_fd = fd;
  }
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = guard_handler;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGBUS, &sa, &guard_previous) < 0) return errno;
  installed = true;
  return 0;
}

/* Records a new mapping: its slot, or -errno (ENOMEM when every slot is taken). */
static int guard_add(void *addr, size_t len, int prot) {
  int slot = -ENOMEM, err;
  pthread_mutex_lock(&guard_lock);
  if ((err = guard_install()) != 0) {
    pthread_mutex_unlock(&guard_lock);
    return -err;
  }
  for (size_t i = 0; i < GUARD_SLOTS; i++) {
    if (atomic_load(&guards[i].len) != 0) continue;
    atomic_store(&guards[i].start, (uintptr_t)addr);
    atomic_store(&guards[i].prot, prot);
    atomic_store(&guards[i].faulted, 0);
    atomic_store(&guards[i].len, len);
    if (i >= atomic_load(&guard_high)) atomic_store(&guard_high, i + 1);
    slot = (int)i;
    break;
  }
  pthread_mutex_unlock(&guard_lock);
  return slot;
}

/* Forgets a mapping (before it is unmapped). */
static void guard_remove(int slot) {
  if (slot >= 0) atomic_store(&guards[slot].len, 0);
}

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

typedef struct { void *addr; size_t len; bool unmapped; int slot; } mapping_t;

static void mapping_finalize(napi_env env, void *data, void *hint) {
  mapping_t *m = hint;
  (void)env, (void)data;
  if (!m->unmapped) {
    guard_remove(m->slot);
    munmap(m->addr, m->len);
  }
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
  if ((m->slot = guard_add(m->addr, length, prot)) < 0) {
    int err = -m->slot;
    munmap(m->addr, length);
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
  int slot = m->slot;
  m->unmapped = true;
  if (napi_detach_arraybuffer(env, argv[0]) != napi_ok) {
    m->unmapped = false; /* still attached, so `m` is still alive */
    return fail(env);
  }
  guard_remove(slot);
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

/* Whether the SIGBUS guard repaired a fault in this mapping (false once unmapped). */
static napi_value js_mapping_faulted(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  bool detached = false, tagged = false;
  mapping_t *m;

  if (!get_args(env, info, argv, 1, 1, NULL) || !arg_arraybuffer(env, argv[0])) return NULL;
  TRY(napi_is_detached_arraybuffer(env, argv[0], &detached));
  TRY(napi_check_object_type_tag(env, argv[0], &MAPPING_TAG, &tagged));
  if (detached || !tagged || napi_unwrap(env, argv[0], (void **)&m) != napi_ok) return ret_bool(env, false);
  return ret_bool(env, atomic_load(&guards[m->slot].faulted) != 0);
}

/* A new fd for the page holding the SIGBUS guard's fault counter (a u32), for JS to map read-only. */
static napi_value js_sigbus_counter_fd(napi_env env, napi_callback_info info) {
  int err;
  (void)info;
  pthread_mutex_lock(&guard_lock);
  err = guard_install();
  pthread_mutex_unlock(&guard_lock);
  if (err != 0) return throw_errno(env, "sigaction", err);
  return ret_fd(env, fcntl(guard_counter_fd, F_DUPFD_CLOEXEC, 0), "dup");
}

bool memory_init(napi_env env, napi_value exports) {
  int err;
  /* The guard (and its counter fd) exists from load on, for the life of the process. */
  pthread_mutex_lock(&guard_lock);
  err = guard_install();
  pthread_mutex_unlock(&guard_lock);
  if (err != 0) {
    throw_errno(env, "sigaction", err);
    return false;
  }
  static const export_fn fns[] = {
      {"fstat", js_fstat}, {"memfdCreate", js_memfd_create}, {"ftruncate", js_ftruncate},
      {"getSeals", js_get_seals}, {"addSeals", js_add_seals}, {"mmap", js_mmap},
      {"munmap", js_munmap}, {"msync", js_msync}, {"mappingFaulted", js_mapping_faulted},
      {"sigbusCounterFd", js_sigbus_counter_fd},
  };
  return EXPORT_FNS(env, exports, fns);
}
