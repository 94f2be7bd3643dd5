/**
 * The device side of `vfio-user demo`, run as a separate process on an
 * inherited socket (fd 3). It answers with the protocol codec and transport
 * only: VERSION, DMA_MAP of a shared guest-RAM memfd, SET_IRQS with an eventfd,
 * REGION_READ/WRITE on a 4 KiB "BAR0" whose doorbell checksums guest memory,
 * DEVICE_RESET. (The full device server is `src/server`; this peer exists to show
 * the foundation layers working across two processes.)
 */
import { callNative, mapFd, native, unmap } from '../../native/addon.js';
import { Command, HeaderFlags, PROTOCOL_MINOR } from '../../protocol/constants.js';
import { encodeVersion } from '../../protocol/version.js';
import { encodeRegionAccess, encodeRegionAccessWithData } from '../../protocol/region-access.js';
import { checkRequestFds, decodeRequest, type DecodedRequest } from '../../protocol/request.js';
import { ProtocolError } from '../../errors.js';
import { fnv1a32 } from '../../devices/fnv1a.js';
import { UnixSocketTransport } from '../../transport/unix-socket.js';
import type { Message } from '../../transport/transport.js';

const BAR0_SIZE = 4096;

interface PeerState {
  guest: Uint8Array | undefined;
  guestFd: number;
  irqFd: number;
  bar0: DataView;
}

/** Serves the demo protocol on fd 3 until the client disconnects. */
export function runDemoPeer(): void {
  const transport = new UnixSocketTransport(3);
  const state: PeerState = { guest: undefined, guestFd: -1, irqFd: -1, bar0: new DataView(new ArrayBuffer(BAR0_SIZE)) };
  transport.start({
    onMessage: (m) => answer(transport, state, m),
    onClose: () => release(state),
  });
}

function answer(transport: UnixSocketTransport, state: PeerState, m: Message): void {
  const reply = { msgId: m.header.msgId, cmd: m.header.cmd, flags: HeaderFlags.TYPE_REPLY };
  try {
    const request = decodeRequest(m.header, m.payload);
    const { use } = checkRequestFds(request, m.fds.count);
    const fds = Array.from({ length: use }, (_, i) => m.fds.take(i));
    transport.send(reply, handle(state, request, fds));
  } catch (e) {
    const errno = e instanceof ProtocolError ? e.errno : 5;
    transport.send({ ...reply, flags: reply.flags | HeaderFlags.ERROR, errorNo: errno });
  } finally {
    m.fds.closeRemaining();
  }
}

function handle(state: PeerState, request: DecodedRequest, fds: number[]): Uint8Array | undefined {
  switch (request.cmd) {
    case Command.VERSION:
      return encodeVersion({ major: 0, minor: Math.min(request.body.minor, PROTOCOL_MINOR), capabilities: { maxMsgFds: 8, maxDataXferSize: 1 << 20 } });
    case Command.DMA_MAP: {
      releaseGuest(state);
      state.guestFd = fds[0] ?? -1;
      const size = Number(request.body.size);
      const fileSize = callNative(() => native.fstat(state.guestFd)).size;
      if (state.guestFd < 0 || request.body.offset + request.body.size > BigInt(fileSize)) throw new ProtocolError('DMA_MAP: range outside the fd');
      state.guest = new Uint8Array(mapFd(state.guestFd, Number(request.body.offset), size, true));
      return undefined;
    }
    case Command.DEVICE_SET_IRQS:
      if (state.irqFd >= 0) native.close(state.irqFd);
      state.irqFd = fds[0] ?? -1;
      return undefined;
    case Command.REGION_READ: {
      const { offset, count } = request.body;
      if (request.body.region !== 0 || offset + BigInt(count) > BigInt(BAR0_SIZE)) throw new ProtocolError('REGION_READ: outside BAR0');
      return encodeRegionAccessWithData({ ...request.body, data: new Uint8Array(state.bar0.buffer, Number(offset), count) });
    }
    case Command.REGION_WRITE:
      doorbell(state, request.body.offset, request.body.data);
      return encodeRegionAccess({ offset: request.body.offset, region: request.body.region, count: request.body.count });
    case Command.DEVICE_RESET:
      release(state);
      return undefined;
    default:
      throw new ProtocolError(`command ${request.cmd} is not part of the demo`);
  }
}

/** BAR0 offset 0 takes a length: checksum that much guest RAM into BAR0 offset 8, then interrupt. */
function doorbell(state: PeerState, offset: bigint, data: Uint8Array): void {
  const guest = state.guest;
  if (offset !== 0n || data.length !== 4 || !guest) throw new ProtocolError('REGION_WRITE: only the 4-byte doorbell at BAR0+0');
  const length = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
  if (length > guest.length) throw new ProtocolError('doorbell: length beyond guest RAM');
  state.bar0.setUint32(8, fnv1a32(guest.subarray(0, length)), true);
  if (state.irqFd >= 0) native.eventfdWrite(state.irqFd, 1n);
}

function releaseGuest(state: PeerState): void {
  if (state.guest) unmap(state.guest.buffer as ArrayBuffer);
  if (state.guestFd >= 0) native.close(state.guestFd);
  state.guest = undefined;
  state.guestFd = -1;
}

function release(state: PeerState): void {
  releaseGuest(state);
  if (state.irqFd >= 0) native.close(state.irqFd);
  state.irqFd = -1;
}
