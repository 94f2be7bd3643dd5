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
import type { BarDefinition, DeviceDefinition, RegionDefinition, RegionSpan } from './types.js';
import { native } from '../native/addon.js';
import { savingLayoutProblem } from '../protocol/mmap-saving.js';

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
  checkSavingMmaps(def);
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

/**
 * Each region's `savingMmap` (SPARSE_MMAP_SAVING): a shared region of a migratable device, at most
 * MAX_SAVING_AREAS page-aligned areas, sorted and not overlapping, inside the region (that they lie inside its
 * runtime sparse areas is checked with the region, regions.ts).
 * @throws {InvalidArgumentError} EINVAL naming the region and the rule.
 */
function checkSavingMmaps(def: DeviceDefinition): void {
  for (const [name, region] of Object.entries(def.regions ?? {}) as [string, RegionDefinition | undefined][]) {
    const areas = region?.savingMmap;
    if (areas === undefined) continue;
    const fail = (rule: string): never => {
      throw new InvalidArgumentError(`${def.name ?? 'device'}: regions.${name}.savingMmap: ${rule}`);
    };
    if (!Array.isArray(areas)) fail('must be an array of {offset, size}');
    if (!region?.shared) fail('needs a shared region (nothing else can be mmapped)');
    if (!def.migration) fail('needs a migratable device (`migration`): there is no saving state otherwise');
    const page = native.constants.PAGE_SIZE;
    for (const a of areas) {
      const ok = Number.isSafeInteger(a?.offset) && Number.isSafeInteger(a?.size) && a.offset >= 0 && a.size > 0;
      if (!ok || a.offset % page !== 0) fail(`area ${JSON.stringify(a)} must have a page-aligned offset and a positive size`);
    }
    const problem = savingLayoutProblem(areas.map((a) => ({ offset: BigInt(a.offset), size: BigInt(a.size) })), BigInt(region?.size ?? 0));
    if (problem !== undefined) fail(problem);
  }
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
