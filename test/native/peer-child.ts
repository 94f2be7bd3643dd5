/**
 * Child process for the shared-memory test (mode `peer`). Fd 3 is a socket to
 * the parent, which sends one byte carrying [memfd, eventfd to parent,
 * eventfd to child]. The child maps the memfd, writes pattern 7, signals the
 * parent, waits for its signal, checks the parent's pattern 13, and answers
 * "ok" (or what went wrong) over the socket.
 * Does nothing without a mode (the test runner may load it as a test file).
 */
import { mapFd, native, unmap } from '../../src/native/addon.js';
import { checkPattern, fillPattern, waitFor } from './util.js';

const SOCKET = 3;

async function peer(): Promise<string> {
  await waitFor(SOCKET);
  const meta = new Int32Array(2 + 4);
  const n = native.recvmsg(SOCKET, new Uint8Array(16), meta);
  const [memfd = -1, toParent = -1, toChild = -1] = meta.subarray(2, 2 + (meta[0] ?? 0));
  if (n !== 1 || meta[0] !== 3 || meta[1] !== 0) return `bad message: n=${n} meta=${String(meta)}`;
  const size = native.fstat(memfd).size;
  const buffer = mapFd(memfd, 0, size, true);
  try {
    const mem = new Uint8Array(buffer);
    fillPattern(mem, 7);
    native.eventfdWrite(toParent, 1n);
    await waitFor(toChild);
    const counter = native.eventfdRead(toChild);
    if (counter !== 1n) return `bad counter ${counter}`;
    const bad = checkPattern(mem, 13);
    return bad < 0 ? `ok ${size}` : `parent pattern differs at ${bad}`;
  } finally {
    unmap(buffer);
    for (const fd of [memfd, toParent, toChild]) native.close(fd);
  }
}

if (process.argv[2] === 'peer') {
  const answer = await peer().catch((error: unknown) => `error: ${String(error)}`);
  native.write(SOCKET, new TextEncoder().encode(answer));
  native.close(SOCKET);
}
