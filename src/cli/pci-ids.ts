/**
 * PCI id → name lookup from the system's `pci.ids` (the file pciutils reads),
 * and the name formats of pciutils' `pci_lookup_name()` for the three numeric
 * modes of `lspci` (names, `-n` numbers, `-nn` both). Without a `pci.ids`
 * every lookup misses and the formats fall back to numbers, as lspci's do.
 */
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { CliError, errorReason } from './common.js';

/** Where pciutils and hwdata install `pci.ids`, in the order they are tried. */
export const PCI_IDS_PATHS = ['/usr/share/misc/pci.ids', '/usr/share/hwdata/pci.ids', '/usr/share/pci.ids', '/usr/local/share/pci.ids', '/usr/share/misc/pci.ids.gz'] as const;

/** Environment variable naming another `pci.ids` (like `lspci -i FILE`). */
export const PCI_IDS_ENV = 'VFIO_USER_PCI_IDS';

/** `lspci`'s name modes: 0 = names, 1 = `-n` (numbers), 2 = `-nn` (names and numbers). */
export type NumericMode = 0 | 1 | 2;

const x = (n: number, width: number): string => n.toString(16).padStart(width, '0');

/** The names of one `pci.ids` file (vendors, devices, subsystems, classes, sub-classes, programming interfaces). */
export class PciIds {
  /** Key: `v`, `v:d`, `v:d:sv:sd`, `S:sv:sd` (generic subsystem), `C:cc`, `C:cc:ss`, `C:cc:ss:pi`, all lower-case hex. */
  private readonly names = new Map<string, string>();

  /**
   * Parses `pci.ids` text with pciutils' rules (tab nesting, `C` class blocks, `S` generic
   * subsystem blocks, other letter blocks skipped); a malformed line is skipped.
   * @param source - where the text came from.
   */
  /** The file the names came from (`undefined`: none). */
  readonly source: string | undefined;

  constructor(text: string, source?: string) {
    this.source = source;
    let block: 'vendor' | 'class' | 'generic' | 'skip' = 'skip';
    let top = '';
    let mid = '';
    for (const raw of text.split('\n')) {
      const line = raw.replace(/[\r\s]+$/, '');
      if (line === '' || /^\s*#/.test(line)) continue;
      const nest = /^\t*/.exec(line)?.[0].length ?? 0;
      const body = line.slice(nest);
      if (nest === 0) [block, top] = this.topLevel(body);
      else if (block === 'skip') continue;
      else if (nest === 1) mid = this.add(body, block === 'class' ? 2 : 4, `${top}:`) ?? '';
      else if (nest === 2 && block !== 'generic') this.addLevel2(body, block === 'class', `${top}:${mid}:`);
    }
  }

  private topLevel(body: string): ['vendor' | 'class' | 'generic' | 'skip', string] {
    const cls = /^C ([0-9a-f]{2})\s+(.+)$/i.exec(body);
    if (cls) return this.set(`C:${cls[1]}`, cls[2]) ? ['class', `C:${(cls[1] ?? '').toLowerCase()}`] : ['skip', ''];
    const gen = /^S ([0-9a-f]{4})$/i.exec(body);
    if (gen) return ['generic', `S:${(gen[1] ?? '').toLowerCase()}`];
    if (/^[A-Z] /.test(body)) return ['skip', ''];
    const vendor = /^([0-9a-f]{4})\s+(.+)$/i.exec(body);
    if (vendor && this.set(vendor[1] ?? '', vendor[2])) return ['vendor', (vendor[1] ?? '').toLowerCase()];
    return ['skip', ''];
  }

  /** Adds `ID name` with an id of `width` hex digits under `prefix`; returns the id. */
  private add(body: string, width: number, prefix: string): string | undefined {
    const m = new RegExp(`^([0-9a-f]{${width}})\\s+(.+)$`, 'i').exec(body);
    if (!m) return undefined;
    const id = (m[1] ?? '').toLowerCase();
    this.set(`${prefix}${id}`, m[2]);
    return id;
  }

  private addLevel2(body: string, isClass: boolean, prefix: string): void {
    if (isClass) {
      this.add(body, 2, prefix);
      return;
    }
    const m = /^([0-9a-f]{4}) ([0-9a-f]{4})\s+(.+)$/i.exec(body);
    if (m) this.set(`${prefix}${m[1] ?? ''}:${m[2] ?? ''}`.toLowerCase(), m[3]);
  }

  private set(key: string, name: string | undefined): boolean {
    if (name === undefined || name === '') return false;
    const k = key.toLowerCase();
    if (!this.names.has(k)) this.names.set(k, name);
    return true;
  }

  /** Number of names loaded. */
  get size(): number {
    return this.names.size;
  }

  /** The vendor's name (`0x1af4` → `Red Hat, Inc.`); never throws. */
  vendor(v: number): string | undefined {
    return this.names.get(x(v, 4));
  }

  /** The device's name under its vendor; never throws. */
  device(v: number, d: number): string | undefined {
    return this.names.get(`${x(v, 4)}:${x(d, 4)}`);
  }

  /** The subsystem's name as pciutils finds it: per device, then generic, then the device itself when ids match. */
  subsystem(v: number, d: number, sv: number, sd: number): string | undefined {
    return (
      (v > 0 && d > 0 ? this.names.get(`${x(v, 4)}:${x(d, 4)}:${x(sv, 4)}:${x(sd, 4)}`) : undefined) ??
      this.names.get(`s:${x(sv, 4)}:${x(sd, 4)}`) ??
      (v === sv && d === sd ? this.device(v, d) : undefined)
    );
  }

  /** Base class name (`0x02` → `Network controller`). */
  baseClass(base: number): string | undefined {
    return this.names.get(`c:${x(base, 2)}`);
  }

  /** Sub-class name from base class and sub-class (`0x0200` → `Ethernet controller`). */
  subClass(cls: number): string | undefined {
    return this.names.get(`c:${x(cls >> 8, 2)}:${x(cls & 0xff, 2)}`);
  }

  /** The programming interface's name under base class and sub-class (`0x0108`, `0x02` → `NVM Express`). */
  progIf(cls: number, progIf: number): string | undefined {
    return this.names.get(`c:${x(cls >> 8, 2)}:${x(cls & 0xff, 2)}:${x(progIf, 2)}`);
  }
}

/** No names: every lookup misses. */
export const NO_PCI_IDS = new PciIds('');

function readIds(path: string): string {
  const data = readFileSync(path);
  return path.endsWith('.gz') ? gunzipSync(data).toString('latin1') : data.toString('utf8');
}

/**
 * Loads `pci.ids`: `file` if given, else `$VFIO_USER_PCI_IDS`, else the first of
 * {@link PCI_IDS_PATHS} that can be read, else {@link NO_PCI_IDS}.
 * @throws {CliError} ENOENT, EACCES, EISDIR when a file named by `file` or the environment cannot be read.
 */
export function loadPciIds(file: string | undefined, env: NodeJS.ProcessEnv = process.env): PciIds {
  const named = file ?? (env[PCI_IDS_ENV] || undefined);
  if (named !== undefined) {
    try {
      return new PciIds(readIds(named), named);
    } catch (error) {
      throw new CliError(`pci.ids ${named}: ${errorReason(error)}`, { cause: error });
    }
  }
  for (const path of PCI_IDS_PATHS) {
    try {
      return new PciIds(readIds(path), path);
    } catch {
      // not installed there: try the next place
    }
  }
  return NO_PCI_IDS;
}

// ------------------------------------------------------------------ pciutils' name formats

function one(mode: NumericMode, name: string | undefined, num: string, unknown: string): string {
  if (mode === 1) return num;
  if (name === undefined) return mode === 2 ? `${unknown} [${num}]` : `${unknown} ${num}`;
  return mode === 2 ? `${name} [${num}]` : name;
}

function pair(mode: NumericMode, v: string | undefined, d: string | undefined, num: string): string {
  if (mode === 1) return num;
  if (v === undefined) return mode === 2 ? `Device [${num}]` : `Device ${num}`;
  if (d === undefined) return mode === 2 ? `${v} Device [${num}]` : `${v} Device ${num.slice(5)}`;
  return mode === 2 ? `${v} ${d} [${num}]` : `${v} ${d}`;
}

/** `Ethernet controller`, `Network controller [0280]` (base class only), `Class 0280`; by mode. */
export function formatClass(ids: PciIds, cls: number, mode: NumericMode): string {
  const sub = ids.subClass(cls);
  if (sub !== undefined) return one(mode, sub, x(cls, 4), 'Class');
  const base = ids.baseClass(cls >> 8);
  return one(base !== undefined && mode === 0 ? 2 : mode, base, x(cls, 4), 'Class');
}

/** `Red Hat, Inc. Virtio network device`, `Red Hat, Inc. Device 10f0`, `Device 1234:5678`; by mode. */
export function formatDevice(ids: PciIds, v: number, d: number, mode: NumericMode): string {
  return pair(mode, ids.vendor(v), ids.device(v, d), `${x(v, 4)}:${x(d, 4)}`);
}

/** The `Subsystem:` line's text; by mode. */
export function formatSubsystem(ids: PciIds, v: number, d: number, sv: number, sd: number, mode: NumericMode): string {
  return pair(mode, ids.vendor(sv), ids.subsystem(v, d, sv, sd), `${x(sv, 4)}:${x(sd, 4)}`);
}
