/**
 * Worker thread for the fd-ownership test: opens fds of every kind the addon
 * hands out (socket pair, eventfd, memfd, dup, listening socket, accepted
 * connection), closes one of them, and reports the numbers. Does nothing on
 * the main thread (the test runner may load it as a test file).
 */
import { isMainThread, parentPort } from 'node:worker_threads';
import { native } from '../../src/native/addon.js';

if (!isMainThread) {
  const [a, b] = native.socketPair();
  const event = native.eventfd(0, 0);
  const memfd = native.memfdCreate('fd-owner', 0);
  const dup = native.dup(event);
  const closed = native.eventfd(0, 0);
  native.close(closed); // released: teardown must not close whatever reuses this number
  parentPort?.postMessage({ open: [a, b, event, memfd, dup], closed });
  parentPort?.on('message', () => process.exit(0)); // runs until told to exit, or terminated
}
