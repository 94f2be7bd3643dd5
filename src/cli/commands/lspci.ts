/**
 * `vfio-user lspci SOCKET [-v] [--dump] [--json]`: reads the whole config
 * space (256 bytes, or 4096 when region 7 is that large) and prints an
 * lspci-style decode. BAR and ROM sizes come from the sizing probe a BIOS or OS
 * does (memory/I-O decode off, save, write all ones, read back, restore).
 * `--dump` prints the hex format `lspci -F FILE` reads instead, without
 * touching the device.
 */
import type { VfioUserClient } from '../../client/client.js';
import { barSizes, romSize } from '../../client/pci-config.js';
import { RemoteError } from '../../errors.js';
import { native } from '../../native/addon.js';
import { RegionIndex } from '../../protocol/constants.js';
import { formatLspciDump } from '../../pci/lspci.js';
import { CONFIG_SPACE_SIZE, EXPRESS_CONFIG_SPACE_SIZE, PciHeader } from '../../pci/registers.js';
import { CliError, siteError, stdio, toJson, withClient, type GlobalOptions, type Output } from '../common.js';
import { capabilityLines, decodeCapabilities, headerLines, titleLine, type BarProbe, type RomProbe } from '../pci-decode.js';

/** Options of `lspci`. */
export interface LspciOptions {
  verbose?: boolean;
  dump?: boolean;
  json?: boolean;
}

const SLOT = '00:00.0';
const CFG = RegionIndex.CONFIG;

/** Sizes the BARs and the ROM with memory and I/O decode turned off, as an OS does. */
async function probe(client: VfioUserClient): Promise<{ bars: BarProbe[]; rom: RomProbe | undefined }> {
  const bars = (await barSizes(client)).map((b): BarProbe => ({
    index: b.index,
    kind: b.type === 'io' ? 'io' : 'memory',
    bits64: b.type === 'mem64',
    prefetchable: b.prefetchable,
    address: b.address,
    size: b.size,
  }));
  return { bars, rom: await romSize(client) };
}

/** Reads all of config space: 256 bytes, or 4096 for a PCI Express function. */
export async function readConfigSpace(client: VfioUserClient): Promise<Uint8Array> {
  const { info, fd } = await client.regionInfo(CFG);
  if (fd !== undefined) native.close(fd);
  if (info.size < BigInt(CONFIG_SPACE_SIZE)) throw new CliError(`config space (region 7) is ${info.size} bytes, less than 256`);
  const size = info.size >= BigInt(EXPRESS_CONFIG_SPACE_SIZE) ? EXPRESS_CONFIG_SPACE_SIZE : CONFIG_SPACE_SIZE;
  try {
    return await client.regionRead(CFG, 0n, size);
  } catch (error) {
    if (!(error instanceof RemoteError)) throw error;
  }
  // a server that refuses one large access (register-at-a-time config handlers): dword by dword
  const bytes = new Uint8Array(size);
  for (let at = 0; at < size; at += 4) bytes.set(await client.regionRead(CFG, BigInt(at), 4), at);
  return bytes;
}

function jsonReport(config: Uint8Array, bars: BarProbe[], rom: RomProbe | undefined): unknown {
  const v = new DataView(config.buffer, config.byteOffset, config.byteLength);
  const classCode = v.getUint32(PciHeader.REVISION_ID, true) >>> 8;
  return {
    slot: SLOT,
    configSize: config.length,
    vendorId: v.getUint16(PciHeader.VENDOR_ID, true),
    deviceId: v.getUint16(PciHeader.DEVICE_ID, true),
    classCode,
    revision: v.getUint8(PciHeader.REVISION_ID),
    subsystemVendorId: v.getUint16(PciHeader.SUBSYSTEM_VENDOR_ID, true),
    subsystemId: v.getUint16(PciHeader.SUBSYSTEM_ID, true),
    command: v.getUint16(PciHeader.COMMAND, true),
    status: v.getUint16(PciHeader.STATUS, true),
    interruptPin: v.getUint8(PciHeader.INTERRUPT_PIN),
    bars,
    rom: rom ?? null,
    capabilities: decodeCapabilities(config),
  };
}

/** Runs `lspci`. */
export async function runLspci(socket: string, options: LspciOptions, global: GlobalOptions, out: Output = stdio): Promise<void> {
  const result = await withClient(
    socket,
    global,
    async (client) => {
      let config: Uint8Array;
      try {
        config = await readConfigSpace(client);
      } catch (error) {
        throw error instanceof CliError ? error : siteError('read config space', error);
      }
      if (options.dump) return { config, bars: [], rom: undefined };
      try {
        return { config, ...(await probe(client)) };
      } catch (error) {
        throw siteError('BAR sizing probe', error);
      }
    },
    { out },
  );
  const { config, bars, rom } = result;
  if (options.dump) {
    for (const line of formatLspciDump(config, { slot: SLOT }).replace(/\n+$/, '').split('\n')) out.line(line);
    out.line('');
    return;
  }
  if (options.json) return out.line(toJson(jsonReport(config, bars, rom)));
  out.line(titleLine(config, SLOT));
  for (const line of headerLines(config, bars, rom)) out.line(line);
  for (const line of capabilityLines(decodeCapabilities(config), options.verbose === true)) out.line(line);
}
