/**
 * `vfio-user demo` (what `npm start` runs for now): the foundation layers end to
 * end across two processes. A peer process is started on one end of a socket
 * pair; this process negotiates VERSION, shares 1 MiB of memfd "guest RAM" with
 * DMA_MAP, installs an eventfd with SET_IRQS, rings a doorbell that makes the
 * peer checksum guest RAM and interrupt, checks the result, and measures the
 * round trip of a 4-byte REGION_READ.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createEventFd, mapFd, memfdCreate, native, socketPair, unmap } from '../../native/addon.js';
import { Command, DmaMapFlags, HeaderFlags, IrqIndex, IrqSetFlags } from '../../protocol/constants.js';
import { decodeVersion, encodeVersion } from '../../protocol/version.js';
import { encodeDmaMapRequest } from '../../protocol/dma.js';
import { encodeIrqSet } from '../../protocol/irq.js';
import { decodeRegionReadReply, encodeRegionAccess, encodeRegionAccessWithData } from '../../protocol/region-access.js';
import { RemoteError, ConnectionClosedError } from '../../errors.js';
import { UnixSocketTransport } from '../../transport/unix-socket.js';
import type { Message } from '../../transport/transport.js';
import { fnv1a32 } from '../../devices/fnv1a.js';

const GUEST_SIZE = 1 << 20;
const MAIN = fileURLToPath(new URL('../main.js', import.meta.url));

/** A minimal request/reply correlator (the full client library is `src/client`). */
class Caller {
  readonly #transport: UnixSocketTransport;
  readonly #pending = new Map<number, { resolve: (m: Message) => void; reject: (e: Error) => void }>();
  #nextId = 1;

  constructor(transport: UnixSocketTransport) {
    this.#transport = transport;
    transport.start({
      onMessage: (m) => this.#settle(m),
      onClose: (error) => {
        for (const p of this.#pending.values()) p.reject(error ?? new ConnectionClosedError('peer closed'));
        this.#pending.clear();
      },
    });
  }

  call(cmd: number, payload?: Uint8Array, fds?: number[]): Promise<Message> {
    const msgId = this.#nextId++ & 0xffff;
    return new Promise((resolve, reject) => {
      this.#pending.set(msgId, { resolve, reject });
      this.#transport.send({ msgId, cmd, flags: HeaderFlags.TYPE_COMMAND }, payload, fds);
    });
  }

  #settle(m: Message): void {
    m.fds.closeRemaining();
    const p = this.#pending.get(m.header.msgId);
    if (!p) return;
    this.#pending.delete(m.header.msgId);
    if (m.header.flags & HeaderFlags.ERROR) p.reject(new RemoteError(`command ${m.header.cmd} failed`, m.header.cmd, m.header.errorNo));
    else p.resolve(m);
  }
}

/** Runs the demo and prints a summary; resolves when the peer has exited. */
export async function runDemo(log: (line: string) => void = console.log): Promise<void> {
  const [mine, theirs] = socketPair();
  const peer = spawn(process.execPath, [MAIN, 'demo-peer'], { stdio: ['ignore', 'inherit', 'inherit', theirs] });
  native.close(theirs);
  const transport = new UnixSocketTransport(mine);
  const caller = new Caller(transport);
  const guestFd = memfdCreate('demo-guest-ram', GUEST_SIZE);
  const irqFd = createEventFd();
  const guest = new Uint8Array(mapFd(guestFd, 0, GUEST_SIZE, true));
  try {
    const version = decodeVersion((await caller.call(Command.VERSION, encodeVersion({ major: 0, minor: 2, capabilities: { maxMsgFds: 8 } }))).payload);
    log(`negotiated vfio-user ${version.major}.${version.minor} with peer pid ${peer.pid}; peer capabilities ${JSON.stringify(version.capabilities)}`);
    for (let i = 0; i < guest.length; i++) guest[i] = (i * 31 + 7) & 0xff;
    const map = { argsz: 32, flags: DmaMapFlags.READ | DmaMapFlags.WRITE, offset: 0n, addr: 0x1000_0000n, size: BigInt(GUEST_SIZE) };
    await caller.call(Command.DMA_MAP, encodeDmaMapRequest(map), [guestFd]);
    const irqSet = { argsz: 20, flags: IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, index: IrqIndex.MSIX, start: 0, count: 1 };
    await caller.call(Command.DEVICE_SET_IRQS, encodeIrqSet(irqSet), [irqFd]);
    log(`shared ${GUEST_SIZE >> 10} KiB of guest RAM (memfd) at IOVA 0x10000000 and one MSI-X eventfd`);
    await ringDoorbell(caller, irqFd, guest, log);
    await measureLatency(caller, log);
    await caller.call(Command.DEVICE_RESET);
  } finally {
    unmap(guest.buffer as ArrayBuffer);
    native.close(guestFd);
    native.close(irqFd);
    transport.close();
  }
  await new Promise((resolve) => peer.once('exit', resolve));
}

async function ringDoorbell(caller: Caller, irqFd: number, guest: Uint8Array, log: (line: string) => void): Promise<void> {
  const interrupt = waitForEventFd(irqFd);
  const length = Uint8Array.of(0, 0, 0x10, 0); // 1 MiB, little-endian
  await caller.call(Command.REGION_WRITE, encodeRegionAccessWithData({ offset: 0n, region: 0, count: 4, data: length }));
  const count = await interrupt;
  const reply = decodeRegionReadReply((await caller.call(Command.REGION_READ, encodeRegionAccess({ offset: 8n, region: 0, count: 4 }))).payload);
  const theirs = reply ? new DataView(reply.data.buffer, reply.data.byteOffset, 4).getUint32(0, true) : -1;
  const ours = fnv1a32(guest);
  if (theirs !== ours) throw new Error(`checksum mismatch: device computed ${theirs.toString(16)}, expected ${ours.toString(16)}`);
  log(`doorbell: the peer checksummed guest RAM through its own mapping (fnv1a ${ours.toString(16)}) and raised ${count} interrupt(s)`);
}

function waitForEventFd(fd: number): Promise<bigint> {
  return new Promise((resolve) => {
    const poller = new native.Poller(fd, () => {
      const value = native.eventfdRead(fd);
      if (typeof value !== 'bigint') return;
      poller.close();
      resolve(value);
    });
    poller.start(native.constants.UV_READABLE);
  });
}

async function measureLatency(caller: Caller, log: (line: string) => void): Promise<void> {
  const read = encodeRegionAccess({ offset: 8n, region: 0, count: 4 });
  const n = 10_000;
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await caller.call(Command.REGION_READ, read);
  const us = Number(process.hrtime.bigint() - start) / n / 1000;
  log(`${n} REGION_READ round trips of 4 bytes: ${us.toFixed(1)} µs each (unpinned; see npm run bench for pinned figures)`);
}
