/**
 * The device request interrupt (vfio IRQ index 4, "REQ") as QEMU sees it.
 *
 * QEMU's vfio PCI code registers an eventfd for REQ at realize
 * (`vfio_pci_register_req_notifier`) and, when the device signals it, calls
 * `qdev_unplug` — on a PCIe hot-plug slot: presses the attention button and
 * waits for the guest to power the slot off. But it does so only when the
 * device's `features` include VFIO_FEATURE_ENABLE_REQ, which only vfio-pci's
 * `x-req` property (default on) sets: QEMU 10.2's vfio-user-pci has no such
 * property, so it never registers REQ and never hears a release request.
 *
 * A one-line patch gives vfio-user-pci the property (default on), and with it
 * the unplug on REQ; the tests run the REQ path when the QEMU under test has
 * it ({@link vfioUserPciHasReq}) and say why they skip otherwise:
 *
 *     --- a/hw/vfio-user/pci.c  (vfio_user_pci_properties[])
 *     +    DEFINE_PROP_BIT("x-req", VFIOPCIDevice, features,
 *     +                    VFIO_FEATURE_ENABLE_REQ_BIT, true),
 */
import type { Guest } from './guest.js';

/** Why the REQ unplug tests skip with a QEMU whose vfio-user-pci does not register REQ. */
export const NO_REQ_REASON =
  "this QEMU's vfio-user-pci has no x-req property, so it never registers the REQ eventfd " +
  '(QEMU 10.2: VFIO_FEATURE_ENABLE_REQ is set only by vfio-pci; see test/support/qemu/req.ts for the one-line patch)';

/**
 * Whether this QEMU's vfio-user-pci has the `x-req` property, i.e. registers
 * the REQ eventfd at realize (default on) and unplugs on it.
 * @throws QmpError if QEMU does not know vfio-user-pci.
 */
export async function vfioUserPciHasReq(g: Guest): Promise<boolean> {
  const props = (await g.qemu.qmp.execute('device-list-properties', { typename: 'vfio-user-pci' })) as { name: string }[];
  return props.some((p) => p.name === 'x-req');
}

/** The properties that turn REQ off on a vfio-user-pci that has `x-req` (none on one that never registers it). */
export function withoutReq(hasReq: boolean): Record<string, unknown> {
  return hasReq ? { 'x-req': false } : {};
}
