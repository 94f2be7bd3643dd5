/**
 * A complete vfio-user device in a few lines: a counter card. BAR0 holds a
 * 32-bit counter register at 0x0 (read it; write any value to add it) and a
 * doorbell at 0x4 that raises MSI-X vector 0; BAR2 is 64 KiB of shared memory
 * the client can mmap; on every doorbell the device also DMA-writes the counter
 * to guest memory at the IOVA last written to 0x8/0xc.
 *
 *   node dist/examples/counter-device.js /tmp/counter.sock
 */
import { createDevice } from '../src/index.js';

const path = process.argv[2] ?? '/tmp/counter.sock';
const regs = new DataView(new ArrayBuffer(4096)); // as large as BAR0: every offset reads (zero where no register is)

const device = createDevice({
  name: 'counter',
  pci: { vendorId: 0x1af4, deviceId: 0x10ff, classCode: 0xff0000 },
  regions: {
    bar0: {
      size: 4096,
      read: (offset, length) => new Uint8Array(regs.buffer.slice(offset, offset + length)),
      write: async (offset, data) => {
        const value = new DataView(data.buffer, data.byteOffset, data.length);
        if (offset === 0 && data.length === 4) regs.setUint32(0, regs.getUint32(0, true) + value.getUint32(0, true), true);
        else if (offset === 8 && data.length === 8) regs.setBigUint64(8, value.getBigUint64(0, true), true);
        else if (offset === 4) {
          const target = regs.getBigUint64(8, true);
          if (target !== 0n && device.connected) await device.dma.write(target, new Uint8Array(regs.buffer.slice(0, 4)));
          device.interrupt(0);
        }
      },
    },
    bar2: { size: 64 * 1024, shared: true },
    bar4: { size: 4096 },
  },
  irqs: { msix: 1 },
  msix: { bar: 4, tableOffset: 0, pbaOffset: 2048 },
  reset: () => {
    new Uint8Array(regs.buffer).fill(0);
  },
});

const server = device.serve(path);
console.log(`counter device on ${server.path}`);
process.on('SIGINT', () => void server.close().then(() => process.exit(0)));
