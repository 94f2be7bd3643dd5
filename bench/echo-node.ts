/**
 * Node ends of the transport round-trip benchmark.
 *   node echo-node.js server PATH                  echo every message back as a reply
 *   node echo-node.js client PATH ITERATIONS SIZE  one message in flight, print JSON
 * Both use the real UnixSocketTransport (addon sendmsg/recvmsg + uv_poll + framer).
 */
import { HeaderFlags } from '../src/protocol/constants.js';
import { UnixListener, connectUnix } from '../src/transport/unix-listener.js';
import type { Message } from '../src/transport/transport.js';
import { summarise } from './stats.js';

function serve(path: string): void {
  const listener = UnixListener.listen(path, {}, (transport) => {
    transport.start({
      onMessage(m: Message) {
        transport.send({ msgId: m.header.msgId, cmd: m.header.cmd, flags: HeaderFlags.TYPE_REPLY }, m.payload);
      },
      onClose() {
        listener.close();
      },
    });
  });
  process.stdout.write('ready\n');
}

async function client(path: string, iterations: number, size: number): Promise<void> {
  const transport = await connectUnix(path);
  const payload = new Uint8Array(size - 16);
  const warmup = Math.floor(iterations / 10) + 100;
  const samples = new Float64Array(iterations);
  let i = -warmup;
  let t0 = 0n;
  await new Promise<void>((resolve, reject) => {
    const sendNext = (): void => {
      t0 = process.hrtime.bigint();
      transport.send({ msgId: i & 0xffff, cmd: 9, flags: 0 }, payload);
    };
    transport.start({
      onMessage(m: Message) {
        const t1 = process.hrtime.bigint();
        if (m.header.msgId !== (i & 0xffff)) return reject(new Error('reply id mismatch'));
        if (i >= 0) samples[i] = Number(t1 - t0);
        i++;
        if (i < iterations) sendNext();
        else resolve();
      },
      onClose(error) {
        reject(error ?? new Error('server closed'));
      },
    });
    sendNext();
  });
  transport.close();
  process.stdout.write(`${JSON.stringify(summarise(samples))}\n`);
}

const [mode, path, iterations, size] = process.argv.slice(2);
if (mode === 'server' && path) serve(path);
else if (mode === 'client' && path) await client(path, Number(iterations), Number(size));
else {
  process.stderr.write('usage: echo-node.js server PATH | client PATH ITERATIONS SIZE\n');
  process.exit(2);
}
