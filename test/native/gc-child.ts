/**
 * Child process for the GC tests (run with `--expose-gc`). Prints a JSON
 * report on stdout; exits non-zero on failure. Does nothing without a mode
 * (the test runner may load it as a test file).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { mapFd, memfdCreate, native, unmap } from '../../src/native/addon.js';

const gc = (globalThis as { gc?: () => void }).gc;

/** Collects garbage and lets Node and V8 run the finalizers they deferred. */
async function collect(): Promise<void> {
  for (let i = 0; i < 4; i++) {
    gc?.();
    await sleep(2);
  }
}

/**
 * Objects are made in plain functions, not in the async modes: a suspended
 * async function may keep its locals alive.
 */
function mapAndForget(fd: number, length: number, count: number): void {
  for (let i = 0; i < count; i++) new Uint8Array(mapFd(fd, 0, length, true))[i] = i;
}

/** Maps, registers and unmaps a buffer; then maps another one. */
function unmapThenMap(fd: number, length: number, registry: FinalizationRegistry<string>): Uint8Array {
  const a = mapFd(fd, 0, length, true);
  registry.register(a, 'a');
  unmap(a);
  return new Uint8Array(mapFd(fd, 0, length, true));
}

/** A stopped poller whose callback closes over it, registered and dropped. */
function dropStoppedPoller(fd: number, registry: FinalizationRegistry<string>): WeakRef<object> {
  const holder: { poller?: object } = {};
  holder.poller = new native.Poller(fd, () => void holder);
  registry.register(holder.poller, 'stopped');
  return new WeakRef(holder.poller);
}

/** Stops the poller behind `ref` if it is still alive; says whether it was. */
function stopIfAlive(ref: WeakRef<object>): boolean {
  const poller = ref.deref() as { stop(): void } | undefined;
  poller?.stop();
  return poller !== undefined;
}

/** A started poller, registered and dropped. */
function dropStartedPoller(fd: number, registry: FinalizationRegistry<string>, onEvent: () => void): WeakRef<object> {
  const poller = new native.Poller(fd, onEvent);
  poller.start(native.constants.UV_WRITABLE);
  registry.register(poller, 'started');
  return new WeakRef(poller);
}

function mappingCount(name: string): number {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((line) => line.includes(`/memfd:${name} `)).length;
}

/** Maps and drops many buffers: the mapping count must not grow. */
async function mmapMode(): Promise<void> {
  const { PAGE_SIZE } = native.constants;
  const fd = memfdCreate('gc-test', 16 * PAGE_SIZE);
  await collect();
  const baseline = mappingCount('gc-test');
  let peak = 0;
  for (let round = 0; round < 20; round++) {
    mapAndForget(fd, 16 * PAGE_SIZE, 50);
    peak = Math.max(peak, mappingCount('gc-test'));
    await collect();
  }
  // An explicitly unmapped buffer's finalizer must not munmap again: map A,
  // unmap it, map B (likely at A's address), let A be finalized, touch B.
  let collected = false;
  const registry = new FinalizationRegistry<string>(() => (collected = true));
  const b = unmapThenMap(fd, 16 * PAGE_SIZE, registry);
  for (let i = 0; i < 50 && !collected; i++) await collect();
  assert.ok(collected, 'the unmapped buffer was collected');
  b[5] = 5; // would SIGSEGV if A's finalizer had unmapped B's pages
  assert.equal(b[5], 5);
  unmap(b.buffer as ArrayBuffer);
  await collect();
  const final = mappingCount('gc-test');
  native.close(fd);
  process.stdout.write(JSON.stringify({ baseline, peak, final }));
  assert.ok(peak > baseline, 'mappings were made');
  assert.ok(final <= baseline + 1, `mappings leaked: ${final} vs ${baseline}`);
}

/** A stopped poller is collectable; a started one is not. */
async function pollerMode(): Promise<void> {
  const [a, b] = native.socketPair();
  let finalized = 0;
  const registry = new FinalizationRegistry<string>(() => finalized++);
  // Stopped, with a callback that closes over the poller: a collectable cycle.
  const dropped = dropStoppedPoller(a, registry);
  for (let i = 0; i < 50 && finalized === 0; i++) await collect();
  assert.equal(finalized, 1, 'a stopped poller is collected');
  assert.equal(dropped.deref(), undefined);

  // Started: kept alive by the addon while started, even with no JS reference.
  let calls = 0;
  const started = dropStartedPoller(b, registry, () => calls++);
  await collect();
  await collect();
  assert.ok(calls > 0, 'the started poller fired');
  assert.ok(stopIfAlive(started), 'a started poller is not collected');
  for (let i = 0; i < 50 && finalized === 1; i++) await collect();
  assert.equal(finalized, 2, 'once stopped, it is collected');
  // The finalizer closed both uv handles; new pollers on the same fds work.
  const p1 = new native.Poller(a, () => undefined);
  p1.start(native.constants.UV_WRITABLE);
  p1.close();
  native.close(a);
  native.close(b);
  process.stdout.write(JSON.stringify({ finalized }));
}

const modes: Record<string, () => Promise<void>> = { mmap: mmapMode, poller: pollerMode };
const mode = modes[process.argv[2] ?? ''];
if (mode) {
  assert.ok(gc, 'run with --expose-gc');
  await mode();
}
