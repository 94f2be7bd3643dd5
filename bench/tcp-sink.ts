/**
 * The raw loopback-TCP reference of the orchestrator benchmark: accepts one
 * connection at a time, reads and discards everything until the sender ends,
 * then answers one byte. Prints `PORT <n>` once listening; exits when stdin closes.
 *   node tcp-sink.js
 */
import { createServer } from 'node:net';

const server = createServer((socket) => {
  socket.on('data', () => undefined);
  socket.on('end', () => socket.end(Buffer.of(1)));
  socket.on('error', () => socket.destroy());
});
server.listen(0, '127.0.0.1', () => {
  const a = server.address();
  process.stdout.write(`PORT ${typeof a === 'object' && a ? a.port : 0}\n`);
});
process.stdin.on('close', () => process.exit(0));
process.stdin.resume();
