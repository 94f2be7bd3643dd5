/**
 * A migratable device for the migration benchmark: its state is a buffer of
 * STATE_BYTES (argv[3], default 256 MiB) filled with a pattern.
 *   node serve-migratable.js PATH [STATE_BYTES]
 */
import { createDevice } from '../src/device/device.js';

const path = process.argv[2];
const size = Number(process.argv[3] ?? 256 * 1024 * 1024);
if (!path) {
  process.stderr.write('usage: serve-migratable.js PATH [STATE_BYTES]\n');
  process.exit(2);
}
const state = new Uint8Array(size);
for (let i = 0; i < size; i += 4096) state[i] = i >>> 12;
const device = createDevice({
  name: 'bench-migratable',
  pci: { vendorId: 0x1af4, deviceId: 0x10f2, classCode: 0xff0000 },
  regions: { bar0: { size: 4096, read: (_o, n) => new Uint8Array(n) } },
  migration: {
    deviceType: 'bench-migratable',
    stateVersion: 1,
    save: () => state,
    load: (_kind, payload) => void state.set(payload.subarray(0, size)),
    stopCopySize: () => size,
  },
});
const server = device.serve(path);
process.on('SIGTERM', () => void server.close().then(() => process.exit(0)));
process.stdout.write('ready\n');
