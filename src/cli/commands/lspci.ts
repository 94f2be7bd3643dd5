/**
 * `vfio-user lspci SOCKET [-v[v]] [-n[n]] [-i FILE] [--dump] [--json]`: reads
 * the whole config space (256 bytes, or 4096 when region 7 is that large) and
 * prints it as pciutils' `lspci` would — one line by default, more with `-v`
 * and `-vv`, names from `pci.ids` (numbers with `-n`, both with `-nn`). BAR
 * and ROM sizes come from the sizing probe a BIOS or OS does (memory/I-O
 * decode off, save, write all ones, read back, restore). `--dump` prints the
 * hex format `lspci -F FILE` reads instead, without touching the device;
 * `--json` prints the decode as structured fields.
 */
import type { VfioUserClient } from '../../client/client.js';
import { barSizes, romSize } from '../../client/pci-config.js';
import { RemoteError } from '../../errors.js';
import { native } from '../../native/addon.js';
import { RegionIndex } from '../../protocol/constants.js';
import { formatLspciDump } from '../../pci/lspci.js';
import { CONFIG_SPACE_SIZE, EXPRESS_CONFIG_SPACE_SIZE } from '../../pci/registers.js';
import { CliError, siteError, stdio, toJson, withClient, type GlobalOptions, type Output } from '../common.js';
import { lspciLines, lspciReport, type BarProbe, type RomProbe } from '../pci-decode.js';
import { loadPciIds, type NumericMode, type PciIds } from '../pci-ids.js';

/** Options of `lspci`. */
export interface LspciOptions {
  /** How many `-v` (0–3). */
  verbose?: number;
  /** How many `-n` (0–2). */
  numeric?: number;
  /** `-i FILE`: the `pci.ids` to read instead of the system's. */
  pciIds?: string;
  dump?: boolean;
  json?: boolean;
}

/** Commander argParser for a repeatable flag: `-vv` counts 2. */
export function countFlag(_value: unknown, previous: number | undefined): number {
  return (previous ?? 0) + 1;
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

async function readDevice(client: VfioUserClient, probeBars: boolean): Promise<{ config: Uint8Array; bars: BarProbe[]; rom: RomProbe | undefined }> {
  let config: Uint8Array;
  try {
    config = await readConfigSpace(client);
  } catch (error) {
    throw error instanceof CliError ? error : siteError('read config space', error);
  }
  if (!probeBars) return { config, bars: [], rom: undefined };
  try {
    return { config, ...(await probe(client)) };
  } catch (error) {
    throw siteError('BAR sizing probe', error);
  }
}

/**
 * `lspci` over an already-connected client (the CLI command and the shell's `lspci`).
 * @param ids - names to use (default: loaded as {@link loadPciIds} does from `options.pciIds`).
 * @throws {CliError} EIO and the server's errno when config space cannot be read or the BARs probed; ENOENT/EACCES for an unreadable `-i` file.
 */
export async function lspciOnClient(client: VfioUserClient, options: LspciOptions, out: Output = stdio, ids: PciIds | undefined = undefined): Promise<void> {
  if (options.dump) {
    const { config } = await readDevice(client, false);
    for (const line of formatLspciDump(config, { slot: SLOT }).replace(/\n+$/, '').split('\n')) out.line(line);
    out.line('');
    return;
  }
  const names = ids ?? loadPciIds(options.pciIds);
  const verbosity = Math.min(options.verbose ?? 0, 3);
  const { config, bars, rom } = await readDevice(client, options.json === true || verbosity > 0);
  if (options.json) return out.line(toJson(lspciReport(config, SLOT, bars, rom, names)));
  const style = { verbosity, numeric: Math.min(options.numeric ?? 0, 2) as NumericMode, ids: names };
  for (const line of lspciLines(config, SLOT, bars, rom, style)) out.line(line);
  if (verbosity > 0) out.line(''); // lspci ends each verbose entry with a blank line
}

/** Runs `lspci`. */
export async function runLspci(socket: string, options: LspciOptions, global: GlobalOptions, out: Output = stdio): Promise<void> {
  const ids = options.dump ? undefined : loadPciIds(options.pciIds); // a bad -i fails before connecting
  await withClient(socket, global, (client) => lspciOnClient(client, options, out, ids), { out });
}
