/*
 * poller.c: the Poller class, a uv_poll_t per fd whose callback runs in JS,
 * and the per-environment state that closes every poller at teardown.
 */
#include "common.h"

#include <stdlib.h>
#include <uv.h>

#define POLL_EVENTS (UV_READABLE | UV_WRITABLE | UV_DISCONNECT | UV_PRIORITIZED)

/* Tells our pollers apart from anyone else's objects (MAPPING_TAG in memory.c differs). */
static const napi_type_tag POLLER_TAG = {0x7666696f75736572ULL, 0x706f6c6c2d746167ULL};

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
 * library) alive until the last close callback has run. It then closes the
 * fds the environment still owns (see fd_own in common.h).
 */

typedef struct poller poller_t;

typedef struct {
  napi_env env;
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
  fd_close_owned(a->env); /* no poller watches them any more (uv_close stopped each) */
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

/* ---- Registration --------------------------------------------------------- */

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

/* Sets up this environment's poller list and teardown hook, and exports Poller. */
bool poller_init(napi_env env, napi_value exports) {
  addon_t *addon = calloc(1, sizeof *addon);
  napi_value cls;

  if (!addon) return throw_errno(env, "calloc", ENOMEM), false;
  addon->env = env;
  if (napi_set_instance_data(env, addon, addon_finalize, NULL) != napi_ok) {
    free(addon);
    return fail(env), false;
  }
  if (napi_add_async_cleanup_hook(env, addon_teardown, addon, NULL) != napi_ok ||
      !(cls = make_poller_class(env)) ||
      napi_set_named_property(env, exports, "Poller", cls) != napi_ok)
    return fail(env), false;
  return true;
}
