/**
 * The receiving host of the orchestrator benchmark's TCP mode: a
 * {@link MigrationReceiver} on 127.0.0.1 (a free port, printed as `PORT <n>`
 * once listening) in front of a device served on DEVICE_SOCKET
 * (bench/serve-dirtying.ts in its own process).
 *
 * Each offer gets a fresh device session and guest memory of the offered size
 * attached at the offered IOVA (fd mode). The memory is faulted in before the
 * hello is answered — outside the migration's timing, as a destination VM's
 * RAM is allocated before it takes a migration — so the throughput compares
 * with the UNIX mode, whose destination memory is warm.
 *
 * A committed migration's side is kept (it is the running destination) until
 * the next offer: then its session is closed (the device server tears the
 * session down; the device keeps its RUNNING migration state) and its memory
 * disposed. An abandoned one was already reset and released by the receiver.
 * Exits on stdin close or SIGTERM.
 *   node receive.js DEVICE_SOCKET
 */
import { VfioUserClient } from '../src/client/client.js';
import { GuestMemory, GUEST_PAGE_SIZE } from '../src/client/guest-memory.js';
import { setCommand } from '../src/client/pci-config.js';
import { MigrationReceiver, type PreparedDestination } from '../src/orchestrator/receiver.js';
import { loadTlsCredentials } from '../src/orchestrator/channel-tls.js';
import { Errno } from '../src/protocol/errno.js';
import { PciCommand } from '../src/pci/registers.js';

const socketPath = process.argv[2];
/** A tls-creds-x509 directory: the channel over mutual TLS. */
const tlsDir = process.argv[3];
if (!socketPath) {
  process.stderr.write('usage: receive.js DEVICE_SOCKET [TLS_CREDS_DIR]\n');
  process.exit(2);
}

interface Held {
  client: VfioUserClient;
  memory: GuestMemory;
  released: boolean;
}

/** The side of the last committed migration (the running destination), until the next offer. */
let committed: Held | undefined;
/** What each prepared destination holds (a committed outcome hands the prepared destination back). */
const sides = new WeakMap<PreparedDestination, Held>();

function releaseHeld(h: Held): void {
  if (h.released) return;
  h.released = true;
  h.client.close();
  h.memory.dispose();
}

/** Connects to the device, retrying while the server still ends the previous session (EBUSY). */
async function connectDevice(path: string): Promise<VfioUserClient> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await VfioUserClient.connect(path);
    } catch (error) {
      if ((error as { errno?: number }).errno !== Errno.EBUSY || attempt >= 10) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

/** Touches every page (one byte written per page, then zeroed) so the memfd is populated. */
function prefault(memory: GuestMemory): void {
  const window = 1 << 30;
  for (let gpa = 0n; gpa < memory.size; gpa += BigInt(window)) {
    const n = Number(memory.size - gpa < BigInt(window) ? memory.size - gpa : BigInt(window));
    const v = memory.view(gpa, n);
    for (let i = 0; i < n; i += GUEST_PAGE_SIZE) v[i] = 0;
  }
}

const receiver = await MigrationReceiver.listen({
  port: 0,
  ...(tlsDir ? { tls: loadTlsCredentials(tlsDir, 'server') } : {}),
  prepare: async (offer): Promise<PreparedDestination> => {
    if (committed) {
      releaseHeld(committed);
      committed = undefined;
    }
    const client = await connectDevice(socketPath);
    const memory = GuestMemory.create(offer.memory.size, { name: 'bench-guest-dst' });
    try {
      await setCommand(client, PciCommand.MEMORY | PciCommand.MASTER);
      prefault(memory);
      await memory.attach(client, { iova: offer.memory.iova, mode: 'fd' });
    } catch (error) {
      client.close();
      memory.dispose();
      throw error;
    }
    const held: Held = { client, memory, released: false };
    const prepared: PreparedDestination = { side: { client, memory, iova: offer.memory.iova }, release: async () => releaseHeld(held) };
    sides.set(prepared, held);
    return prepared;
  },
  onOutcome: (o) => {
    if (o.outcome === 'committed') {
      committed = o.destination && sides.get(o.destination);
    } else if (o.reason !== undefined && !/abandoned the migration/.test(o.reason)) {
      process.stderr.write(`receive: ${o.outcome}: ${o.reason}\n`); // anything but the sender's abandon after an abort
    }
  },
});

process.stdout.write(`PORT ${receiver.port}\n`);

function exit(): void {
  receiver.close();
  if (committed) releaseHeld(committed);
  process.exit(0);
}
process.on('SIGTERM', exit);
process.stdin.on('end', exit);
process.stdin.on('close', exit);
process.stdin.resume();
