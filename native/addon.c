/*
 * addon.c: module init for vfio_user_native, the syscalls Node cannot make on
 * its own (fd passing, mmap, eventfd, memfd, file seals, SO_PEERCRED, raw
 * poll). Plain wrappers, no protocol logic; the contract is `NativeBinding` in
 * src/native/types.ts.
 *
 * Each file registers its own functions: socket.c (UNIX sockets), fd.c (plain
 * fds, eventfd, ioctl), memory.c (memfd, seals, mmap), poller.c (Poller);
 * common.c holds the helpers they share. Conventions are in common.h.
 */
#include "common.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uv.h>

/* ---- Module --------------------------------------------------------------- */

static napi_value make_constants(napi_env env) {
  napi_value c;

  TRY(napi_create_object(env, &c));
  if (!set_int(env, c, "UV_READABLE", UV_READABLE) || !set_int(env, c, "UV_WRITABLE", UV_WRITABLE) ||
      !set_int(env, c, "UV_DISCONNECT", UV_DISCONNECT) || !set_int(env, c, "PROT_READ", PROT_READ) ||
      !set_int(env, c, "PROT_WRITE", PROT_WRITE) ||
      !set_int(env, c, "MFD_ALLOW_SEALING", MFD_ALLOW_SEALING) ||
      !set_int(env, c, "F_SEAL_SEAL", F_SEAL_SEAL) || !set_int(env, c, "F_SEAL_SHRINK", F_SEAL_SHRINK) ||
      !set_int(env, c, "F_SEAL_GROW", F_SEAL_GROW) || !set_int(env, c, "F_SEAL_WRITE", F_SEAL_WRITE) ||
      !set_int(env, c, "EFD_SEMAPHORE", EFD_SEMAPHORE) ||
      !set_int(env, c, "PAGE_SIZE", sysconf(_SC_PAGESIZE)) ||
      !set_int(env, c, "MAX_SEND_FDS", MAX_SEND_FDS) || !set_int(env, c, "SCM_MAX_FD", SCM_MAX_FD))
    return fail(env);
  TRY(napi_object_freeze(env, c));
  return c;
}

NAPI_MODULE_INIT() {
  napi_value v;

  if (!socket_init(env, exports) || !fd_init(env, exports) || !memory_init(env, exports) ||
      !poller_init(env, exports) || !(v = make_constants(env)))
    return NULL;
  TRY(napi_set_named_property(env, exports, "constants", v));
  return exports;
}
