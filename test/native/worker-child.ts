/**
 * Worker thread for the teardown test: leaves pollers (started, stopped,
 * closed mid-close) and mappings (live, unmapped) behind for environment
 * teardown to clean up, then tells the parent it is ready or exits by itself.
 * Does nothing on the main thread (the test runner may load it as a test file).
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { mapFd, memfdCreate, native, unmap } from '../../src/native/addon.js';

function leaveThingsBehind(): void {
  const { UV_READABLE, UV_WRITABLE, PAGE_SIZE } = native.constants;
  const [a, b] = native.socketPair();
  const [c] = native.socketPair();
  const fd = memfdCreate('worker-teardown', 4 * PAGE_SIZE);
  const started = new native.Poller(a, () => undefined);
  started.start(UV_WRITABLE);
  const stopped = new native.Poller(b, () => undefined);
  stopped.start(UV_READABLE);
  stopped.stop();
  new native.Poller(c ?? -1, () => undefined).close(); // close callback still pending
  const kept = [started, stopped, mapFd(fd, 0, 4 * PAGE_SIZE, true)];
  unmap(mapFd(fd, 0, PAGE_SIZE, true));
  (globalThis as { kept?: unknown }).kept = kept;
}

if (!isMainThread) {
  leaveThingsBehind();
  if ((workerData as { exit?: boolean } | null)?.exit) setImmediate(() => process.exit(0));
  else parentPort?.postMessage('ready');
}
