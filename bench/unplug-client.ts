/**
 * The clients of the hot-unplug benchmark (bench/unplug.ts), in their own
 * process so they can be pinned with the host. Commands on stdin, one a line:
 *   coop PATH    connect, listen for release requests (`onReleaseRequest`:
 *                the REQ eventfd, SET_IRQS index 4) and close at the first one
 *   ignore PATH  connect, listen for release requests and ignore them (the
 *                server forces the session closed at its timeout)
 * Answers on stdout: `ready` once connected and listening, `gone <n>` once the
 * connection ended (n: release requests received).
 */
import { createInterface } from 'node:readline';
import { VfioUserClient } from '../src/client/client.js';

async function serve(mode: string, path: string): Promise<void> {
  const client = await VfioUserClient.connect(path);
  let requests = 0;
  await client.onReleaseRequest(({ count }) => {
    requests = count;
    if (mode === 'coop') client.close();
  });
  void client.closed.then(() => process.stdout.write(`gone ${requests}\n`));
  process.stdout.write('ready\n');
}

for await (const line of createInterface({ input: process.stdin })) {
  const [mode, path] = line.trim().split(' ');
  if ((mode !== 'coop' && mode !== 'ignore') || !path) {
    process.stdout.write(`error: bad command '${line}'\n`);
    continue;
  }
  await serve(mode, path).catch((e: Error) => process.stdout.write(`error: ${e.message}\n`));
}
