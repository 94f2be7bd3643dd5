/**
 * Release requests, client side: the device request IRQ (vfio IRQ index 4,
 * REQ). The kernel signals it when a device in use is being removed
 * (`vfio_unregister_group_dev`), repeating with an increasing count until the
 * user lets go, and removes the device by force if it never does; a device
 * host built on this library does the same when an instance in use is
 * stopped (`vfio-user mdev stop --timeout`).
 *
 * {@link onReleaseRequest} installs one eventfd on REQ with DEVICE_SET_IRQS
 * (DATA_EVENTFD | ACTION_TRIGGER) per client and calls every listener with the
 * number of requests so far. A cooperating client finishes the work in
 * flight (or hands it elsewhere) and closes the connection; QEMU unplugs the
 * device from its guest. An eventfd counts signals: requests that arrive
 * faster than they are read come as one call whose count jumps by more
 * than one.
 */
import { ProtocolError } from '../errors.js';
import { IrqIndex, IrqSetFlags } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import type { Logger } from '../log.js';
import type { VfioUserClient } from './client.js';
import { SharedEventFd } from './eventfd-watch.js';

/** One release request: `count` requests have been received so far on this connection (1, 2, …). */
export interface ReleaseRequest {
  count: number;
}

const channels = new WeakMap<VfioUserClient, SharedEventFd>();

function channelOf(client: VfioUserClient, logger: Logger): SharedEventFd {
  let channel = channels.get(client);
  if (!channel || channel.closed) {
    channel = new SharedEventFd(client, {
      install: async (fd) => {
        const info = await client.irqInfo(IrqIndex.REQ);
        if (info.count < 1) throw new ProtocolError('onReleaseRequest: the device has no request IRQ (index 4 has no vector)', { errno: Errno.ENOTSUP });
        await client.setIrqs({ flags: IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, index: IrqIndex.REQ, start: 0, count: 1 }, [fd]);
      },
      uninstall: () => client.setIrqs({ flags: IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER, index: IrqIndex.REQ, start: 0, count: 0 }),
    }, logger);
    channels.set(client, channel);
  }
  return channel;
}

/**
 * Calls `listener` each time the server asks this client to release the
 * device, with the number of requests received so far on the connection.
 * The first listener of a client installs the REQ eventfd (DEVICE_GET_IRQ_INFO
 * then DEVICE_SET_IRQS); later ones share it. A listener that throws is
 * logged (`logger`) and does not keep the others from running.
 * @returns a disposer: removes the listener; the last one uninstalls the
 *   eventfd (SET_IRQS TRIGGER|NONE count 0) and closes it. Closing the client
 *   closes it too.
 * @throws {ProtocolError} ENOTSUP when the device has no request IRQ.
 * @throws {RemoteError} the server's errno for DEVICE_GET_IRQ_INFO / SET_IRQS (EINVAL).
 * @throws {ConnectionClosedError} ENOTCONN when the connection is closed.
 * @throws {SystemError} EMFILE when no eventfd can be created.
 */
export function onReleaseRequest(client: VfioUserClient, listener: (request: ReleaseRequest) => void, logger: Logger): Promise<() => Promise<void>> {
  const channel = channelOf(client, logger);
  return channel.add(() => listener({ count: Number(channel.total) }));
}
