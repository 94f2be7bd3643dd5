/**
 * A migratable device for the orchestrator benchmark whose DMA dirties guest
 * memory at a controlled rate: while RUNNING or PRE_COPY it walks the guest
 * memory mapped at IOVA page by page (wrapping), writing RATE pages per ms in
 * 64 KiB runs through `device.dma.writeSync` (so DMA logging sees them);
 * any other state stops it. BAR0 (little endian):
 *   0x00 u32 write: RATE (pages per ms; 0 = idle)
 *   0x00 u64 read:  pages written so far
 *   0x08 u64 read:  µs spent dirtying (in a running state, RATE > 0)
 * Its state is 4 KiB (with the counters). The rate is not migrated.
 *   node serve-dirtying.js PATH GUEST_BYTES IOVA
 */
import { createDevice } from '../src/device/device.js';
import { MigrationState } from '../src/protocol/constants.js';

const path = process.argv[2];
const guestBytes = Number(process.argv[3]);
const iova = BigInt(process.argv[4] ?? 0);
if (!path || !(guestBytes > 0)) {
  process.stderr.write('usage: serve-dirtying.js PATH GUEST_BYTES IOVA\n');
  process.exit(2);
}
const PAGE = 4096;
const RUN_PAGES = 16;
const pages = Math.floor(guestBytes / PAGE);
const run = new Uint8Array(RUN_PAGES * PAGE).fill(0xa5);
let rate = 0;
let running = true;
let next = 0; // page the walk writes next
let written = 0;
let activeUs = 0;
let last = performance.now();
let owed = 0;

function tick(): void {
  const t = performance.now();
  const dt = t - last;
  last = t;
  if (!running || rate === 0 || !device.connected) {
    owed = 0;
    return;
  }
  activeUs += dt * 1000;
  owed = Math.min(owed + rate * dt, rate * 20); // catch up at most 20 ms of lag
  while (owed >= 1) {
    const n = Math.min(RUN_PAGES, Math.floor(owed), pages - next);
    device.dma.writeSync(iova + BigInt(next * PAGE), n === RUN_PAGES ? run : run.subarray(0, n * PAGE));
    next = (next + n) % pages;
    written += n;
    owed -= n;
  }
}

const state = new Uint8Array(4096);
const device = createDevice({
  name: 'bench-dirtying',
  pci: { vendorId: 0x1af4, deviceId: 0x10f4, classCode: 0xff0000 },
  regions: {
    bar0: {
      size: 4096,
      read: (offset, n) => {
        const out = new Uint8Array(n);
        const v = new DataView(new ArrayBuffer(16));
        v.setBigUint64(0, BigInt(written), true);
        v.setBigUint64(8, BigInt(Math.round(activeUs)), true);
        if (offset < 16) out.set(new Uint8Array(v.buffer, offset, Math.min(n, 16 - offset)));
        return out;
      },
      write: (offset, data) => {
        if (offset === 0 && data.length >= 4) {
          rate = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
          last = performance.now();
        }
      },
    },
  },
  migration: {
    preCopy: true,
    deviceType: 'bench-dirtying',
    stateVersion: 1,
    save: () => {
      const v = new DataView(state.buffer);
      v.setBigUint64(0, BigInt(written), true);
      v.setUint32(8, next, true);
      return state.slice();
    },
    load: (_kind, payload) => void state.set(payload.subarray(0, state.length)),
    transition: (_from, to) => {
      tick(); // account for the time up to the arc
      running = to === MigrationState.RUNNING || to === MigrationState.PRE_COPY;
      last = performance.now();
    },
    stopCopySize: () => state.length,
  },
});
setInterval(tick, 1);
const server = device.serve(path);
process.on('SIGTERM', () => void server.close().then(() => process.exit(0)));
process.stdout.write('ready\n');
