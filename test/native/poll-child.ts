/**
 * Child process for the Poller exception tests. Modes:
 * - `throw`: a poll callback throws, nothing handles it; the process must die.
 * - `handled`: the same with an 'uncaughtException' handler, which must see
 *   the error; then the poller and later addon calls must work normally.
 * Does nothing without a mode (the test runner may load it as a test file).
 */
import assert from 'node:assert/strict';
import { native } from '../../src/native/addon.js';

const { UV_READABLE } = native.constants;

function throwMode(): void {
  const [a, b] = native.socketPair();
  const poller = new native.Poller(a, () => {
    throw new Error('boom from the poll callback');
  });
  poller.start(UV_READABLE);
  native.write(b, new Uint8Array([1]));
  // Keeps the process alive if the exception were swallowed.
  setTimeout(() => process.stdout.write('still alive'), 2000);
}

function handledMode(): void {
  const [a, b] = native.socketPair();
  const seen: string[] = [];
  let calls = 0;
  process.on('uncaughtException', (error) => {
    seen.push(error.message);
    // A later addon call must not rethrow the stale exception.
    assert.equal(native.fstat(a).size, 0);
    native.write(b, new Uint8Array([2]));
  });
  const poller = new native.Poller(a, () => {
    native.read(a, new Uint8Array(16));
    calls++;
    if (calls === 1) throw new Error('first call throws');
    poller.close();
    native.close(a);
    native.close(b);
    process.stdout.write(JSON.stringify({ seen, calls }));
  });
  poller.start(UV_READABLE);
  native.write(b, new Uint8Array([1]));
}

const modes: Record<string, () => void> = { throw: throwMode, handled: handledMode };
modes[process.argv[2] ?? '']?.();
