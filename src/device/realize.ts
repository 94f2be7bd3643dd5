/**
 * Realize: turning a {@link DeviceDefinition} into config-space options and the
 * glue between config space and the interrupt router. Everything is checked
 * here, once, before a device exists.
 */
import { InvalidArgumentError } from '../errors.js';
import type { Logger } from '../log.js';
import { RegionIndex } from '../protocol/constants.js';
import { CallbackChecks } from './callback-checks.js';
import type { ConfigSpace } from '../pci/config-space.js';
import type { BarOptions, ConfigSpaceOptions, MsiOptions } from '../pci/types.js';
import type { InterruptState } from './irqs.js';
import type { MsixWindow } from './regions.js';
import type { BarDefinition, DeviceDefinition, RegionSpan } from './types.js';

const MSIX_ENTRY = 16;

/** Table and PBA offsets of the device's MSI-X structures (defaults applied). */
function msixLayout(def: DeviceDefinition): { tableOffset: number; tableSize: number; pbaOffset: number; pbaSize: number } | undefined {
  const vectors = def.irqs?.msix ?? 0;
  if (vectors === 0) return undefined;
  const tableOffset = def.msix?.tableOffset ?? 0;
  const tableSize = vectors * MSIX_ENTRY;
  const pbaSize = Math.ceil(vectors / 64) * 8;
  return { tableOffset, tableSize, pbaOffset: def.msix?.pbaOffset ?? defaultPbaOffset(def, tableOffset + tableSize, pbaSize), pbaSize };
}

/** The page after the table when the BAR has room (so the table's pages stay apart), else the next 8 bytes. */
function defaultPbaOffset(def: DeviceDefinition, tableEnd: number, pbaSize: number): number {
  const r = def.regions ?? {};
  const bar = def.msix ? [r.bar0, r.bar1, r.bar2, r.bar3, r.bar4, r.bar5][def.msix.bar] : undefined;
  const nextPage = Math.ceil(tableEnd / 4096) * 4096;
  if (!bar || nextPage + pbaSize <= bar.size) return nextPage;
  return Math.ceil(tableEnd / 8) * 8;
}

/** The spans of BAR `bar` that hold the MSI-X table and PBA (none elsewhere). */
export function msixCarveOut(def: DeviceDefinition, bar: number): RegionSpan[] {
  const layout = msixLayout(def);
  if (!layout || def.msix?.bar !== bar) return [];
  return [
    { offset: layout.tableOffset, size: layout.tableSize },
    { offset: layout.pbaOffset, size: layout.pbaSize },
  ];
}

/**
 * Config-space options for a definition.
 * @throws {InvalidArgumentError} EINVAL for MSI-X without a placement BAR, bad MSI counts, etc.
 */
export function configSpaceOptions(def: DeviceDefinition, logger?: Logger): ConfigSpaceOptions {
  const r = def.regions ?? {};
  const bars = [r.bar0, r.bar1, r.bar2, r.bar3, r.bar4, r.bar5].map(barOptions);
  const caps = def.capabilities ?? {};
  const options: ConfigSpaceOptions = {
    vendorId: def.pci.vendorId,
    deviceId: def.pci.deviceId,
    subsystemVendorId: def.pci.subsystemVendorId ?? 0,
    subsystemId: def.pci.subsystemId ?? 0,
    classCode: def.pci.classCode,
    revision: def.pci.revision ?? 0,
    interruptPin: def.irqs?.intx ? 1 : 0,
    bars,
    pm: caps.pm ?? true,
  };
  if (r.rom) options.rom = { size: r.rom.size };
  const msi = def.irqs?.msi ?? 0;
  if (msi > 0) options.msi = { vectors: msi as MsiOptions['vectors'], bits64: caps.msi?.bits64 ?? true, perVectorMask: caps.msi?.perVectorMask ?? true };
  const layout = msixLayout(def);
  if (layout) {
    if (!def.msix) throw new InvalidArgumentError(`${def.name ?? 'device'}: MSI-X vectors need a \`msix.bar\` to hold the table`);
    if (!bars[def.msix.bar]) throw new InvalidArgumentError(`MSI-X table BAR ${def.msix.bar} is not declared`);
    options.msix = { vectors: def.irqs?.msix ?? 0, bar: def.msix.bar, tableOffset: layout.tableOffset, pbaOffset: layout.pbaOffset };
  }
  if (caps.express) options.express = { portType: caps.express.portType ?? 'endpoint' };
  if (caps.serialNumber !== undefined) options.serialNumber = caps.serialNumber;
  if (caps.vendor) options.vendorCapabilities = caps.vendor.map((payload) => ({ payload }));
  if (caps.vendorExtended) options.vsecs = caps.vendorExtended.map((v) => ({ id: v.id, rev: v.revision, payload: v.data }));
  if (def.configVendorArea) options.vendorArea = vendorArea(def, logger);
  return options;
}

function barOptions(bar: BarDefinition | undefined): BarOptions | undefined {
  if (!bar) return undefined;
  return { size: bar.size, type: bar.type ?? 'mem32', prefetchable: bar.prefetchable ?? false };
}

/** The author's config-space callbacks, their mistakes logged (callback-checks.ts); they must be synchronous. */
function vendorArea(def: DeviceDefinition, logger: Logger | undefined): NonNullable<ConfigSpaceOptions['vendorArea']> {
  const cb = def.configVendorArea ?? {};
  const checks = new CallbackChecks(RegionIndex.CONFIG, logger);
  const notSynchronous = (pending: Promise<unknown>): InvalidArgumentError => {
    pending.catch(() => undefined); // discarded: its rejection must not become an unhandled one
    return new InvalidArgumentError('config-space vendor callbacks must be synchronous');
  };
  return {
    read(offset, length) {
      const data = cb.read ? checks.read(cb, offset, length) : new Uint8Array(length);
      if (data instanceof Promise) throw notSynchronous(data);
      return data;
    },
    write(offset, data) {
      if (!cb.write) throw new InvalidArgumentError(`config space 0x${offset.toString(16)} is not writable`);
      const done = checks.write(cb, offset, data);
      if (done instanceof Promise) throw notSynchronous(done);
    },
  };
}

/** The MSI-X table/PBA accessors a BAR routes to. */
export function msixWindow(config: ConfigSpace): MsixWindow | undefined {
  const msix = config.msix;
  if (!msix) return undefined;
  return {
    tableOffset: msix.table.offset,
    tableSize: msix.table.size,
    pbaOffset: msix.pba.offset,
    pbaSize: msix.pba.size,
    tableRead: (o, l) => msix.tableRead(o, l),
    tableWrite: (o, d) => msix.tableWrite(o, d),
    pbaRead: (o, l) => msix.pbaRead(o, l),
  };
}

/** The view of config space the interrupt router needs. */
export function interruptStateOf(config: ConfigSpace): InterruptState {
  return {
    mode: () => config.interruptMode,
    msixMasked: (v) => config.msix?.isMasked(v) ?? true,
    msiMasked: (v) => config.msi?.isMasked(v) ?? false,
    msiEnabledVectors: () => config.msi?.allocatedVectors ?? 0,
    intxDisabled: () => config.intxDisabled,
    setMsixPending: (v, p) => config.msix?.setPending(v, p),
    setMsiPending: (v, p) => config.msi?.setPending(v, p),
    msixPending: (v) => config.msix?.isPending(v) ?? false,
    msiPending: (v) => config.msi?.isPending(v) ?? false,
    intxAsserted: () => (config.status & 0x8) !== 0, // Status bit 3: Interrupt Status
    setIntxStatus: (asserted) => {
      if (config.interruptPin !== 0) config.setIntxAsserted(asserted);
    },
  };
}
