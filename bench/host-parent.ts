/**
 * The parent the host benchmark runs: `bench-gpio`, instances of our GPIO card
 * (src/devices/gpio.ts, the device the server benchmark measures alone), as
 * many as asked for — a parent with no resource limit but a per-type cap, so
 * the benchmark measures the host, not a resource model.
 */
import { createGpioDevice } from '../src/devices/gpio.js';
import type { MdevParent } from '../src/host/types.js';

export const parent: MdevParent = {
  name: 'bench',
  types: [
    {
      name: 'gpio',
      label: 'GPIO card (benchmark)',
      description: 'the GPIO card of the server benchmark, one per instance',
      maxInstances: 4096,
      create: () => createGpioDevice().device,
    },
  ],
};
