/**
 * Our GPIO card (src/devices/gpio.ts, the twin of libvfio-user's
 * `gpio-pci-idio-16` sample) served for the server benchmark.
 *   node serve-gpio.js PATH
 */
import { createGpioDevice } from '../src/devices/gpio.js';

const path = process.argv[2];
if (!path) {
  process.stderr.write('usage: serve-gpio.js PATH\n');
  process.exit(2);
}
const { device } = createGpioDevice();
const server = device.serve(path);
process.on('SIGTERM', () => void server.close().then(() => process.exit(0)));
process.stdout.write('ready\n');
