/**
 * One device of the container migration benchmark (bench/container.ts), in
 * its own process: migratable with pre-copy, and with the P2P states unless
 * told otherwise; while RUNNING or PRE_COPY its DMA dirties its own slice of
 * the shared guest memory (slice `index` of `slices`, so devices dirty
 * disjoint pages) at a rate the benchmark sets, in 64 KiB runs through
 * `device.dma.writeSync` (DMA logging sees them). Every other state —
 * RUNNING_P2P and PRE_COPY_P2P included: a quiesced device initiates no DMA —
 * stops it. Its state is `STATE_BYTES` of opaque data, saved whole at the
 * start of pre-copy and again at STOP_COPY. BAR0 (little endian):
 *   0x00 u32 write: RATE (pages per ms; 0 = idle)
 *   0x00 u64 read:  pages written so far
 *   0x08 u64 read:  µs spent dirtying
 *   node container-device.js PATH GUEST_BYTES IOVA INDEX SLICES P2P(0|1) STATE_BYTES
 */
import { createDevice } from '../src/device/device.js';
import { MigrationState } from '../src/protocol/constants.js';

const [path, guestArg, iovaArg, indexArg, slicesArg, p2pArg, stateArg] = process.argv.slice(2);
const guestBytes = Number(guestArg);
const slices = Number(slicesArg);
const index = Number(indexArg);
const stateBytes = Number(stateArg);
if (!path || !(guestBytes > 0) || !(slices >= 1) || !(index >= 0 && index < slices) || !(stateBytes >= 16)) {
  process.stderr.write('usage: container-device.js PATH GUEST_BYTES IOVA INDEX SLICES P2P(0|1) STATE_BYTES\n');
  process.exit(2);
}
const iova = BigInt(iovaArg ?? 0);
const PAGE = 4096;
const RUN = 16;
const slicePages = Math.floor(guestBytes / PAGE / slices);
const first = index * slicePages;
const run = new Uint8Array(RUN * PAGE).fill(0x5a + index);
const DIRTYING = new Set<number>([MigrationState.RUNNING, MigrationState.PRE_COPY]);

const walk = { rate: 0, dirtying: true, next: 0, written: 0, activeUs: 0, owed: 0, last: performance.now() };

/** Writes what the rate owes since the last tick (at most 20 ms of lag is caught up). */
function tick(): void {
  const now = performance.now();
  const dt = now - walk.last;
  walk.last = now;
  if (!walk.dirtying || walk.rate === 0 || !device.connected) {
    walk.owed = 0;
    return;
  }
  walk.activeUs += dt * 1000;
  walk.owed = Math.min(walk.owed + walk.rate * dt, walk.rate * 20);
  while (walk.owed >= 1) {
    const n = Math.min(RUN, Math.floor(walk.owed), slicePages - walk.next);
    device.dma.writeSync(iova + BigInt((first + walk.next) * PAGE), run.subarray(0, n * PAGE));
    walk.next = (walk.next + n) % slicePages;
    walk.written += n;
    walk.owed -= n;
  }
}

function counters(offset: number, n: number): Uint8Array {
  const v = new DataView(new ArrayBuffer(16));
  v.setBigUint64(0, BigInt(walk.written), true);
  v.setBigUint64(8, BigInt(Math.round(walk.activeUs)), true);
  const out = new Uint8Array(n);
  if (offset < 16) out.set(new Uint8Array(v.buffer, offset, Math.min(n, 16 - offset)));
  return out;
}

const state = new Uint8Array(stateBytes).fill(index + 1);
const device = createDevice({
  name: `bench-container-${index}`,
  pci: { vendorId: 0x1af4, deviceId: 0x10f5, classCode: 0xff0000 },
  regions: {
    bar0: {
      size: 4096,
      read: counters,
      write: (offset, data) => {
        if (offset !== 0 || data.length < 4) return;
        walk.rate = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
        walk.last = performance.now();
        setTicking(walk.rate > 0);
      },
    },
  },
  migration: {
    p2p: p2pArg === '1',
    preCopy: true,
    deviceType: 'bench-container',
    stateVersion: 1,
    save: () => {
      new DataView(state.buffer).setBigUint64(0, BigInt(walk.written), true);
      return state.slice();
    },
    load: (_kind, payload) => void state.set(payload.subarray(0, state.length)),
    transition: (_from, to) => {
      tick(); // account for the time up to the arc
      walk.dirtying = DIRTYING.has(to);
      walk.last = performance.now();
    },
    stopCopySize: () => state.length,
  },
});
let ticker: NodeJS.Timeout | undefined;
/** The 1 ms walk runs only while a rate is set (idle devices cost no CPU, the benchmark runs many). */
function setTicking(on: boolean): void {
  if (on && !ticker) ticker = setInterval(tick, 1);
  if (!on && ticker) {
    clearInterval(ticker);
    ticker = undefined;
  }
}
const server = device.serve(path);
process.on('SIGTERM', () => void server.close().then(() => process.exit(0)));
process.stdout.write('ready\n');
