/**
 * A parent for the interop tests (`vfio-user host --parent`): `lvu-sample`,
 * whose one type `lvu-sample-server` serves the device shaped like
 * libvfio-user's `samples/server` (`server-sample-device.ts`), so that its
 * `samples/client` can be run against a host instance.
 */
import type { MdevParent } from '../../src/host/types.js';
import { serverSampleDevice } from './server-sample-device.js';

/** The `lvu-sample` parent: at most 4 instances of `lvu-sample-server`. */
export const parent: MdevParent = {
  name: 'lvu-sample',
  types: [
    {
      name: 'server',
      description: "libvfio-user's samples/server device (0xdead:0xbeef, BAR0 8-byte timer, BAR1 16 KiB sparse-mmapped)",
      maxInstances: 4,
      create: () => serverSampleDevice().device,
    },
  ],
};

// A parent module's contract is its default export (src/host/types.ts), which the project's lint otherwise forbids.
// eslint-disable-next-line no-restricted-syntax
export default parent;
