/**
 * The device the server benchmark talks to: BAR0 answers 4-byte reads from a
 * synchronous callback (the common case of a register read).
 *   node serve-device.js PATH
 */
import { createDevice } from '../src/device/device.js';

const path = process.argv[2];
if (!path) {
  process.stderr.write('usage: serve-device.js PATH\n');
  process.exit(2);
}
const registers = new Uint8Array(4096);
const device = createDevice({
  name: 'bench',
  pci: { vendorId: 0x1af4, deviceId: 0x10f1, classCode: 0xff0000 },
  regions: { bar0: { size: 4096, read: (o, n) => registers.subarray(o, o + n), write: (o, d) => void registers.set(d, o) } },
});
const server = device.serve(path);
process.on('SIGTERM', () => void server.close().then(() => process.exit(0)));
process.stdout.write('ready\n');
