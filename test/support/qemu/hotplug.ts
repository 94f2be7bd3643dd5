/**
 * Native PCIe hot-plug from both sides: QMP `device_add`/`device_del` (the
 * operator) and the guest's part on the root port's Slot Control register
 * (PCIe 4.0 §7.5.3.10): power the slot on after a plug, off after the
 * attention button press QEMU signals for `device_del` — only then does QEMU
 * remove the device (hw/pci/pcie.c: pcie_cap_slot_write_config).
 */
import { vfioUserPciJson } from './launcher.js';
import type { Guest } from './guest.js';
import { CapId, type PciFunction } from './pci.js';

const SLTCTL = 0x18, SLTSTA = 0x1a;
const Ctl = { PIC_MASK: 3 << 8, PIC_ON: 1 << 8, PIC_OFF: 3 << 8, PCC_OFF: 1 << 10 } as const;
const Sta = { ABP: 1 << 0, PDC: 1 << 3, PDS: 1 << 6, EVENTS: 0x1f } as const;

/** Time QEMU has for each step. */
const STEP_MS = 5000;

/** Slot Control with the power indicator and controller set as given. */
async function setSlotPower(port: PciFunction, on: boolean): Promise<void> {
  const exp = await port.capability(CapId.PCIE);
  const ctl = await port.read16(exp + SLTCTL);
  const next = (ctl & ~(Ctl.PIC_MASK | Ctl.PCC_OFF)) | (on ? Ctl.PIC_ON : Ctl.PIC_OFF | Ctl.PCC_OFF);
  await port.write16(exp + SLTCTL, next);
}

/** Slot Status, with its event bits cleared (RW1C) after reading. */
async function takeSlotStatus(port: PciFunction): Promise<number> {
  const exp = await port.capability(CapId.PCIE);
  const sta = await port.read16(exp + SLTSTA);
  if (sta & Sta.EVENTS) await port.write16(exp + SLTSTA, sta & Sta.EVENTS);
  return sta;
}

/**
 * `device_add` of a vfio-user-pci on the root port whose QOM id is `bus`
 * (default `rp0`), with further properties `props`, then the guest powers the slot on.
 * @throws Error if the slot does not report the device present.
 */
export async function plugIn(g: Guest, port: PciFunction, d: { id: string; socket: string; bus?: string; props?: Record<string, unknown> }): Promise<void> {
  const args = JSON.parse(vfioUserPciJson({ id: d.id, socket: d.socket, bus: d.bus ?? 'rp0', props: d.props })) as Record<string, unknown>;
  await g.qemu.qmp.execute('device_add', args);
  const sta = await takeSlotStatus(port);
  if (!(sta & Sta.PDS)) throw new Error(`hot-plug: slot status 0x${sta.toString(16)} after device_add: no presence`);
  await setSlotPower(port, true);
}

/**
 * `device_del` of `id`, then, once QEMU pressed the attention button, the
 * guest powers the slot off; resolves on DEVICE_DELETED.
 * @throws Error if no button press or no DEVICE_DELETED arrives in time.
 */
export async function unplug(g: Guest, port: PciFunction, id: string): Promise<void> {
  const from = g.qemu.qmp.events.length;
  await g.qemu.qmp.execute('device_del', { id });
  await ejectOnButton(g, port, id, from);
}

/**
 * The guest's side of an unplug QEMU started (QMP `device_del`, or the
 * device's REQ interrupt: hw/vfio/pci.c vfio_req_notifier_handler calls
 * qdev_unplug): waits for the attention button press, powers the slot off,
 * resolves on DEVICE_DELETED for `id` (looked for from QMP event index `from`).
 * @throws Error if no button press or no DEVICE_DELETED arrives in time.
 */
export async function ejectOnButton(g: Guest, port: PciFunction, id: string, from: number, stepMs = STEP_MS): Promise<void> {
  await waitForButton(port, id, stepMs);
  await powerOff(g, port, id, from, stepMs);
}

/**
 * The guest powers the slot off (an unplug QEMU started is pending); resolves
 * on DEVICE_DELETED for `id` (looked for from QMP event index `from`).
 * @throws Error if no DEVICE_DELETED arrives in time.
 */
export async function powerOff(g: Guest, port: PciFunction, id: string, from: number, stepMs = STEP_MS): Promise<void> {
  await setSlotPower(port, false);
  await g.qemu.qmp.waitEvent((e) => e.event === 'DEVICE_DELETED' && e.data?.['device'] === id, from, stepMs);
}

/**
 * Waits until QEMU pressed the slot's attention button (Slot Status ABP, then cleared).
 * @throws Error if it does not within `stepMs`.
 */
export async function waitForButton(port: PciFunction, id: string, stepMs = STEP_MS): Promise<void> {
  const deadline = Date.now() + stepMs;
  while (!((await takeSlotStatus(port)) & Sta.ABP)) {
    if (Date.now() > deadline) throw new Error(`hot-unplug: no attention button press for ${id}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}
