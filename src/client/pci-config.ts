/**
 * PCI configuration-space helpers for a client, over region 7 (REGION_READ/
 * REGION_WRITE): typed register access, capability-list walks that survive a
 * hostile device (cycles, pointers into the header, runaway lists), MSI and
 * MSI-X enabling, MSI-X vector masking in the table BAR, BAR sizing and the
 * Command register.
 *
 * Every helper takes a {@link ConfigAccess}, which a `VfioUserClient` is; a
 * test can pass a fake.
 */
import { InvalidArgumentError, ProtocolError, RemoteError, StateError } from '../errors.js';
import { RegionIndex } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import {
  BarFlags,
  CAPABILITIES_START,
  CONFIG_SPACE_SIZE,
  CapHeader,
  CapabilityId,
  EXPRESS_CONFIG_SPACE_SIZE,
  EXT_CAPABILITIES_START,
  PciCommand,
  PciHeader,
  PciStatus,
  RomFlags,
} from '../pci/registers.js';
import { MsiControl } from '../pci/capabilities/msi.js';
import { MsixControl } from '../pci/capabilities/msix.js';
import { MSIX_ENTRY_SIZE, MSIX_VECTOR_MASKED, MsixEntry } from '../pci/capabilities/msix-table.js';

/** What the helpers need from a client (a `VfioUserClient` has it). */
export interface ConfigAccess {
  regionRead(index: number, offset: bigint, count: number): Promise<Uint8Array>;
  regionWrite(index: number, offset: bigint, data: Uint8Array): Promise<void>;
}

/** Width of a config register access. */
export type ConfigWidth = 1 | 2 | 4;

/** One capability found by a walk. */
export interface ConfigCapability {
  offset: number;
  id: number;
  /** Extended capabilities: the version (bits 19:16 of the header). */
  version?: number;
}

/** Why a walk stopped: the list ended, it revisited an entry, a pointer was invalid, or it ran too long. */
export type CapabilityWalkEnd = 'end' | 'cycle' | 'bad-pointer' | 'limit';

/** Result of {@link listCapabilities} / {@link listExtendedCapabilities}. */
export interface CapabilityListing {
  capabilities: ConfigCapability[];
  end: CapabilityWalkEnd;
}

/** Where a device's MSI-X capability, table and PBA are. */
export interface MsixInfo {
  /** Capability offset in config space. */
  offset: number;
  /** Message Control. */
  control: number;
  tableSize: number;
  enabled: boolean;
  functionMasked: boolean;
  tableBar: number;
  tableOffset: number;
  pbaBar: number;
  pbaOffset: number;
}

/** A device's MSI capability. */
export interface MsiInfo {
  offset: number;
  control: number;
  /** Multiple Message Capable, as a vector count. */
  vectorsCapable: number;
  /** Multiple Message Enable, as a vector count. */
  vectorsEnabled: number;
  enabled: boolean;
  bits64: boolean;
  perVectorMask: boolean;
}

/** One BAR as sizing found it. */
export interface BarSize {
  /** BAR slot (the lower one of a 64-bit BAR). */
  index: number;
  type: 'io' | 'mem32' | 'mem64';
  prefetchable: boolean;
  /** The base address programmed now (both halves of a 64-bit BAR; 0 = unassigned). */
  address: bigint;
  size: bigint;
}

/** The expansion ROM BAR as sizing found it. */
export interface RomSize {
  /** The base address programmed now (bits 31:11). */
  address: number;
  /** The ROM Enable bit. */
  enabled: boolean;
  size: number;
}

/** Offsets in the MSI-X and MSI capabilities (the pci layer exports only their bits). */
const MSIX_CONTROL = 2;
const MSIX_TABLE = 4;
const MSIX_PBA = 8;
const MSI_CONTROL = 2;
const BIR_MASK = 0x7;
const BAR_COUNT = 6;
/** Most entries a list can hold: one per dword after the header / in extended space. */
const MAX_CAPS = (CONFIG_SPACE_SIZE - CAPABILITIES_START) / 4;
const MAX_EXT_CAPS = (EXPRESS_CONFIG_SPACE_SIZE - EXT_CAPABILITIES_START) / 4;

/**
 * Reads a 1-, 2- or 4-byte little-endian config register.
 * @throws {RemoteError} EINVAL for an offset outside config space.
 */
export async function readConfig(client: ConfigAccess, offset: number, size: ConfigWidth): Promise<number> {
  checkWidth('readConfig', offset, size);
  const b = await client.regionRead(RegionIndex.CONFIG, BigInt(offset), size);
  if (b.length !== size) throw new ProtocolError(`readConfig 0x${offset.toString(16)}: ${b.length} bytes for ${size}`, { errno: Errno.EPROTO });
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return size === 1 ? v.getUint8(0) : size === 2 ? v.getUint16(0, true) : v.getUint32(0, true);
}

/**
 * Writes a 1-, 2- or 4-byte little-endian config register.
 * @throws {RemoteError} EINVAL when the server refuses the write.
 */
export async function writeConfig(client: ConfigAccess, offset: number, size: ConfigWidth, value: number): Promise<void> {
  checkWidth('writeConfig', offset, size);
  await client.regionWrite(RegionIndex.CONFIG, BigInt(offset), le(size, value));
}

/**
 * Walks the standard capability list from 0x34 (if Status says there is one).
 * Stops at a repeated entry, a pointer into the header or past config space,
 * or after as many entries as fit.
 */
export async function listCapabilities(client: ConfigAccess): Promise<CapabilityListing> {
  const capabilities: ConfigCapability[] = [];
  if ((await readConfig(client, PciHeader.STATUS, 2) & PciStatus.CAP_LIST) === 0) return { capabilities, end: 'end' };
  const seen = new Set<number>();
  let at = (await readConfig(client, PciHeader.CAPABILITY_LIST, 1)) & ~3;
  while (at !== 0) {
    if (at < CAPABILITIES_START || at + 2 > CONFIG_SPACE_SIZE) return { capabilities, end: 'bad-pointer' };
    if (seen.has(at)) return { capabilities, end: 'cycle' };
    if (seen.size >= MAX_CAPS) return { capabilities, end: 'limit' };
    seen.add(at);
    const header = await readConfig(client, at + CapHeader.ID, 2);
    capabilities.push({ offset: at, id: header & 0xff });
    at = (header >>> 8) & ~3;
  }
  return { capabilities, end: 'end' };
}

/**
 * Walks the extended capability list from 0x100. A device without extended
 * config space (the read at 0x100 is refused with EINVAL) has none.
 * Same loop protection as {@link listCapabilities}.
 */
export async function listExtendedCapabilities(client: ConfigAccess): Promise<CapabilityListing> {
  const capabilities: ConfigCapability[] = [];
  const seen = new Set<number>();
  let at: number = EXT_CAPABILITIES_START;
  for (;;) {
    if (at < EXT_CAPABILITIES_START || at + 4 > EXPRESS_CONFIG_SPACE_SIZE) return { capabilities, end: 'bad-pointer' };
    if (seen.has(at)) return { capabilities, end: 'cycle' };
    if (seen.size >= MAX_EXT_CAPS) return { capabilities, end: 'limit' };
    seen.add(at);
    let header: number;
    try {
      header = await readConfig(client, at, 4);
    } catch (error) {
      if (at === EXT_CAPABILITIES_START && error instanceof RemoteError && error.errno === Errno.EINVAL) return { capabilities, end: 'end' };
      throw error;
    }
    if (header === 0 || header === 0xffffffff) return { capabilities, end: 'end' };
    capabilities.push({ offset: at, id: header & 0xffff, version: (header >>> 16) & 0xf });
    at = (header >>> 20) & 0xffc;
    if (at === 0) return { capabilities, end: 'end' };
  }
}

/** Offset of the first standard capability `id` (CapabilityId), or undefined. */
export async function findCapability(client: ConfigAccess, id: number): Promise<number | undefined> {
  return (await listCapabilities(client)).capabilities.find((c) => c.id === id)?.offset;
}

/** Offset of the first extended capability `id` (ExtCapabilityId), or undefined. */
export async function findExtendedCapability(client: ConfigAccess, id: number): Promise<number | undefined> {
  return (await listExtendedCapabilities(client)).capabilities.find((c) => c.id === id)?.offset;
}

/** The MSI-X capability's registers, or undefined without one. */
export async function msixInfo(client: ConfigAccess): Promise<MsixInfo | undefined> {
  const offset = await findCapability(client, CapabilityId.MSIX);
  if (offset === undefined) return undefined;
  const control = await readConfig(client, offset + MSIX_CONTROL, 2);
  const table = await readConfig(client, offset + MSIX_TABLE, 4);
  const pba = await readConfig(client, offset + MSIX_PBA, 4);
  return {
    offset,
    control,
    tableSize: (control & MsixControl.TABLE_SIZE_MASK) + 1,
    enabled: (control & MsixControl.ENABLE) !== 0,
    functionMasked: (control & MsixControl.FUNCTION_MASK) !== 0,
    tableBar: table & BIR_MASK,
    tableOffset: (table & ~BIR_MASK) >>> 0,
    pbaBar: pba & BIR_MASK,
    pbaOffset: (pba & ~BIR_MASK) >>> 0,
  };
}

/**
 * Sets MSI-X Enable (Message Control bit 15) and sets or clears the Function
 * Mask (default: clears it). Vectors keep their own mask bits: see
 * {@link unmaskMsixVector}.
 * @returns the capability as it reads afterwards.
 * @throws {StateError} ENODEV when the device has no MSI-X capability.
 */
export async function enableMsix(client: ConfigAccess, options: { functionMask?: boolean } = {}): Promise<MsixInfo> {
  const info = requireCap('enableMsix', 'MSI-X', await msixInfo(client));
  const mask = options.functionMask ? MsixControl.FUNCTION_MASK : 0;
  await writeConfig(client, info.offset + MSIX_CONTROL, 2, (info.control & ~MsixControl.FUNCTION_MASK) | MsixControl.ENABLE | mask);
  return (await msixInfo(client)) as MsixInfo;
}

/** Clears MSI-X Enable. @throws {StateError} ENODEV without MSI-X. */
export async function disableMsix(client: ConfigAccess): Promise<void> {
  const info = requireCap('disableMsix', 'MSI-X', await msixInfo(client));
  await writeConfig(client, info.offset + MSIX_CONTROL, 2, info.control & ~MsixControl.ENABLE);
}

/**
 * Clears (or sets) the Mask bit of MSI-X vector `vector`: writes the Vector
 * Control dword at `tableOffset + 16·vector + 12` in the table BAR.
 * @param info - from {@link msixInfo}/{@link enableMsix}, to skip the walk.
 * @throws {InvalidArgumentError} EINVAL for a vector beyond the table; {@link StateError} ENODEV without MSI-X.
 */
export async function unmaskMsixVector(client: ConfigAccess, vector: number, info?: MsixInfo, masked = false): Promise<void> {
  const msix = info ?? (requireCap('unmaskMsixVector', 'MSI-X', await msixInfo(client)));
  if (!Number.isInteger(vector) || vector < 0 || vector >= msix.tableSize) {
    throw new InvalidArgumentError(`unmaskMsixVector: vector ${vector} outside the ${msix.tableSize}-entry MSI-X table`);
  }
  const at = msix.tableOffset + MSIX_ENTRY_SIZE * vector + MsixEntry.VECTOR_CONTROL;
  await client.regionWrite(msix.tableBar, BigInt(at), le(4, masked ? MSIX_VECTOR_MASKED : 0));
}

/** Sets the Mask bit of MSI-X vector `vector` (see {@link unmaskMsixVector}). */
export async function maskMsixVector(client: ConfigAccess, vector: number, info?: MsixInfo): Promise<void> {
  await unmaskMsixVector(client, vector, info, true);
}

/** The MSI capability's Message Control, decoded, or undefined without one. */
export async function msiInfo(client: ConfigAccess): Promise<MsiInfo | undefined> {
  const offset = await findCapability(client, CapabilityId.MSI);
  if (offset === undefined) return undefined;
  const control = await readConfig(client, offset + MSI_CONTROL, 2);
  return {
    offset,
    control,
    vectorsCapable: 1 << ((control & MsiControl.MMC_MASK) >> 1),
    vectorsEnabled: 1 << ((control & MsiControl.MME_MASK) >> 4),
    enabled: (control & MsiControl.ENABLE) !== 0,
    bits64: (control & MsiControl.ADDR64) !== 0,
    perVectorMask: (control & MsiControl.PER_VECTOR_MASK) !== 0,
  };
}

/**
 * Enables MSI with `vectors` vectors (Multiple Message Enable) and sets Enable.
 * @param vectors - a power of two up to what the device is capable of (default 1).
 * @throws {InvalidArgumentError} EINVAL for a count the device cannot do; {@link StateError} ENODEV without MSI.
 */
export async function enableMsi(client: ConfigAccess, vectors = 1): Promise<MsiInfo> {
  const info = requireCap('enableMsi', 'MSI', await msiInfo(client));
  const log2 = Math.log2(vectors);
  if (!Number.isInteger(log2) || log2 < 0 || vectors > info.vectorsCapable) {
    throw new InvalidArgumentError(`enableMsi: ${vectors} vectors (the device can do powers of two up to ${info.vectorsCapable})`);
  }
  await writeConfig(client, info.offset + MSI_CONTROL, 2, (info.control & ~MsiControl.MME_MASK) | (log2 << 4) | MsiControl.ENABLE);
  return (await msiInfo(client)) as MsiInfo;
}

/**
 * Sizes every BAR the classic way: memory and I/O decode off, then per BAR
 * save, write all-ones, read the mask back, restore; decode on again as it was.
 * @returns the implemented BARs (a 64-bit BAR once, at its lower slot).
 * @throws {RemoteError} the server's errno for a refused access.
 */
export async function barSizes(client: ConfigAccess): Promise<BarSize[]> {
  return withDecodeOff(client, async () => {
    const bars: BarSize[] = [];
    for (let i = 0; i < BAR_COUNT; i++) {
      const at = PciHeader.BASE_ADDRESS_0 + 4 * i;
      const low = await probe(client, at);
      if (low.mask === 0) continue;
      if (low.mask & BarFlags.IO) {
        // No writable address bits: not implemented (Linux's pci_size), e.g. libvfio-user's gpio sample's I/O BARs.
        if ((low.mask & ~0x3) === 0) continue;
        let mask = BigInt(low.mask & ~0x3);
        if ((mask & 0xffff0000n) === 0n) mask |= 0xffff0000n; // a 16-bit I/O decoder
        bars.push({ index: i, type: 'io', prefetchable: false, address: BigInt((low.saved & ~0x3) >>> 0), size: (~mask & 0xffffffffn) + 1n });
        continue;
      }
      const prefetchable = (low.mask & BarFlags.PREFETCH) !== 0;
      const address = BigInt((low.saved & ~0xf) >>> 0);
      if ((low.mask & 0x6) === BarFlags.MEM_TYPE_64 && i + 1 < BAR_COUNT) {
        const high = await probe(client, at + 4);
        const mask = (BigInt(high.mask) << 32n) | BigInt((low.mask & ~0xf) >>> 0);
        if (mask !== 0n) bars.push({ index: i, type: 'mem64', prefetchable, address: (BigInt(high.saved) << 32n) | address, size: (~mask & 0xffff_ffff_ffff_ffffn) + 1n });
        i++;
      } else if ((low.mask & ~0xf) !== 0) {
        bars.push({ index: i, type: 'mem32', prefetchable, address, size: (~BigInt((low.mask & ~0xf) >>> 0) & 0xffffffffn) + 1n });
      }
    }
    return bars;
  });
}

/**
 * Sizes the expansion ROM BAR (address bits written all-ones, Enable left as it was), decode off meanwhile.
 * @returns undefined when the device has no ROM.
 * @throws {RemoteError} the server's errno for a refused access.
 */
export async function romSize(client: ConfigAccess): Promise<RomSize | undefined> {
  return withDecodeOff(client, async () => {
    const rom = await probe(client, PciHeader.ROM_ADDRESS, RomFlags.ADDRESS_MASK);
    const mask = (rom.mask & RomFlags.ADDRESS_MASK) >>> 0;
    if (mask === 0) return undefined;
    return { address: (rom.saved & RomFlags.ADDRESS_MASK) >>> 0, enabled: (rom.saved & RomFlags.ENABLE) !== 0, size: (mask & -mask) >>> 0 };
  });
}

/** Runs `fn` with memory and I/O decode off (as an OS sizes BARs), restoring Command afterwards. */
async function withDecodeOff<T>(client: ConfigAccess, fn: () => Promise<T>): Promise<T> {
  const command = await readConfig(client, PciHeader.COMMAND, 2);
  const decode = PciCommand.IO | PciCommand.MEMORY;
  if (command & decode) await writeConfig(client, PciHeader.COMMAND, 2, command & ~decode);
  try {
    return await fn();
  } finally {
    if (command & decode) await writeConfig(client, PciHeader.COMMAND, 2, command);
  }
}

/**
 * Read-modify-write of the Command register: sets `set`, clears `clear`.
 * @returns the value read back afterwards (bits the device hardwires stay as they are).
 */
export async function setCommand(client: ConfigAccess, set: number, clear = 0): Promise<number> {
  const command = await readConfig(client, PciHeader.COMMAND, 2);
  await writeConfig(client, PciHeader.COMMAND, 2, ((command & ~clear) | set) & 0xffff);
  return readConfig(client, PciHeader.COMMAND, 2);
}

/** Sets Bus Master Enable (and nothing else). @returns the Command register afterwards. */
export async function enableBusMaster(client: ConfigAccess): Promise<number> {
  return setCommand(client, PciCommand.MASTER);
}

/** Writes `value` (all-ones) to the dword at `at`, reads back what sticks, restores it. */
async function probe(client: ConfigAccess, at: number, value = 0xffffffff): Promise<{ saved: number; mask: number }> {
  const saved = await readConfig(client, at, 4);
  await writeConfig(client, at, 4, value);
  try {
    return { saved, mask: await readConfig(client, at, 4) };
  } finally {
    await writeConfig(client, at, 4, saved);
  }
}

function requireCap<T>(site: string, what: string, info: T | undefined): T {
  if (info === undefined) throw new StateError(`${site}: the device has no ${what} capability`, { errno: Errno.ENODEV });
  return info;
}

function checkWidth(site: string, offset: number, size: number): void {
  if ((size !== 1 && size !== 2 && size !== 4) || !Number.isInteger(offset) || offset < 0 || offset + size > EXPRESS_CONFIG_SPACE_SIZE) {
    throw new InvalidArgumentError(`${site}: ${size} bytes at 0x${offset.toString(16)} is not a config register access`);
  }
}

function le(size: ConfigWidth, value: number): Uint8Array {
  const b = new Uint8Array(size);
  const v = new DataView(b.buffer);
  if (size === 1) v.setUint8(0, value & 0xff);
  else if (size === 2) v.setUint16(0, value & 0xffff, true);
  else v.setUint32(0, value >>> 0, true);
  return b;
}
