/**
 * A parent of your own for the device host: a card with four counter slots,
 * offered as one type. Each instance is a small PCI device whose BAR0 holds a
 * 32-bit counter at 0x0 (read it; write a value to add it); attribute
 * `initial` sets where it starts (and where a reset puts it back).
 *
 *   vfio-user host --parent dist/examples/my-parent.js
 *   vfio-user mdev types -p counters
 *   vfio-user mdev start -p counters -t counters-counter --addattr initial --value 100 ...
 *
 * The rules (src/host/types.ts): the module's default export is the parent;
 * importing it must have no side effects (the host imports it in its main
 * thread for the metadata and in each instance's worker to build the device);
 * `create` builds one instance; each attribute's `apply` acts on a freshly
 * created instance, in the order of the definition, and throws to refuse a
 * value (the host then removes the instance: nothing half-created).
 */
import { createDevice, InvalidArgumentError, type MdevParent } from '../src/index.js';

/** What `create` hands to the attributes: the counter and where it restarts. */
interface Counter {
  value: number;
  initial: number;
}

const parent: MdevParent = {
  name: 'counters',
  resources: { slots: 4 },
  types: [
    {
      name: 'counter',
      description: 'a 32-bit counter in BAR0 (one slot of four)',
      cost: { slots: 1 },
      attributes: {
        initial: {
          description: 'starting value, 0 to 4294967295',
          apply: (instance, value) => {
            const n = Number(value);
            if (!/^[0-9]+$/.test(value) || n > 0xffffffff) throw new InvalidArgumentError(`initial ${JSON.stringify(value)} must be an integer from 0 to 4294967295`);
            const counter = instance.state as Counter;
            counter.initial = counter.value = n;
          },
        },
      },
      create: ({ uuid }) => {
        const counter: Counter = { value: 0, initial: 0 };
        const device = createDevice({
          name: `counter/${uuid}`,
          pci: { vendorId: 0x1af4, deviceId: 0x10fe, classCode: 0xff0000 },
          regions: {
            bar0: {
              size: 4096,
              read: (offset, length) => {
                const bytes = new Uint8Array(length);
                if (offset === 0 && length === 4) new DataView(bytes.buffer).setUint32(0, counter.value, true);
                return bytes;
              },
              write: (offset, data) => {
                if (offset === 0 && data.length === 4) counter.value = (counter.value + new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true)) >>> 0;
              },
            },
          },
          reset: () => {
            counter.value = counter.initial;
          },
        });
        return { device, state: counter };
      },
    },
  ],
};

// The host takes a parent module's default export (the project's lint forbids default exports elsewhere).
// eslint-disable-next-line no-restricted-syntax
export default parent;
