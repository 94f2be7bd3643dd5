/**
 * `--assign-bars auto|always|never`: what the CLI's BAR accesses (`read`,
 * `write`, `bench`, the shell) do about servers that serve a BAR only once it
 * has an address and decoding is on (QEMU's `x-remote` vfio-user server).
 *
 * - `auto` (default): access as asked; if a BAR access is refused with EINVAL
 *   while that BAR is unassigned or its decoding is off, and the access lies
 *   inside the region, assign the BARs and enable decoding as a VMM does
 *   (`assignBars`), then retry the access once. A refused access had no
 *   effect, so the retry does not repeat a write. Devices that serve BARs
 *   regardless (ours, libvfio-user's samples) are never touched.
 * - `always`: assign and enable before the first BAR access.
 * - `never`: never touch config space.
 */
import type { VfioUserClient } from '../client/client.js';
import { assignBars, barDecodes, type BarAssignment } from '../client/bar-setup.js';
import { InvalidArgumentError, RemoteError } from '../errors.js';
import { native } from '../native/addon.js';
import { Errno } from '../protocol/errno.js';
import { hex, humanSize } from './common.js';

/** The `--assign-bars` modes. */
export const ASSIGN_BARS_MODES = ['auto', 'always', 'never'] as const;
/** One of {@link ASSIGN_BARS_MODES}. */
export type AssignBarsMode = (typeof ASSIGN_BARS_MODES)[number];

/**
 * Parses `--assign-bars` (default `auto`).
 * @throws {InvalidArgumentError} EINVAL for another word.
 */
export function parseAssignBars(text: string | undefined): AssignBarsMode {
  if (text === undefined) return 'auto';
  const mode = ASSIGN_BARS_MODES.find((m) => m === text.trim().toLowerCase());
  if (mode === undefined) throw new InvalidArgumentError(`--assign-bars: '${text}' is not auto, always or never`);
  return mode;
}

/** One line describing an assignment: `BAR0 0xc0000000 (4K, new), BAR2 io 0xc000 (256); command 0x0003`. */
export function describeAssignment(a: BarAssignment): string {
  const bars = a.bars.map((b) => `BAR${b.index} ${b.type === 'io' ? 'io ' : ''}${hex(b.address)} (${humanSize(b.size)}${b.assigned ? ', new' : ''})`);
  return `${bars.join(', ') || 'no BARs'}; command ${hex(a.command, 4)}`;
}

const LAST_BAR = 5;

/** BAR accesses of one client session under one `--assign-bars` mode. */
export class BarGate {
  readonly client: VfioUserClient;
  readonly mode: AssignBarsMode;
  readonly #note: (text: string) => void;
  readonly #sizes = new Map<number, bigint>();
  #assignment: Promise<BarAssignment> | undefined;

  /** @param note - receives one line when the gate assigned the BARs (the CLI prints it on stderr). */
  constructor(client: VfioUserClient, mode: AssignBarsMode, note: (text: string) => void = () => undefined) {
    this.client = client;
    this.mode = mode;
    this.#note = note;
  }

  /** The assignment made in this session, if any. */
  get assignment(): Promise<BarAssignment> | undefined {
    return this.#assignment;
  }

  /** After a DEVICE_RESET: the device's BARs and Command register are cleared again. */
  forget(): void {
    this.#assignment = undefined;
  }

  /**
   * Assigns the BARs and enables decoding once per session (later calls get the first result).
   * @throws see `assignBars` (ENOSPC, EIO, the server's errno).
   */
  assign(): Promise<BarAssignment> {
    if (this.#assignment === undefined) {
      const pending = assignBars(this.client).then((a) => {
        this.#note(`assigned BARs and enabled decoding as a VMM does: ${describeAssignment(a)}`);
        return a;
      });
      pending.catch(() => (this.#assignment = undefined));
      this.#assignment = pending;
    }
    return this.#assignment;
  }

  /**
   * Runs `access` (an access of `length` bytes at `offset` of region `region`) under the mode: see the module comment.
   * @throws what `access` throws (its first error when the set-up does not apply or does not help).
   */
  async run<T>(region: number, offset: bigint, length: number, access: () => Promise<T>): Promise<T> {
    if (region > LAST_BAR || this.mode === 'never') return access();
    if (this.mode === 'always') {
      await this.assign();
      return access();
    }
    if (this.#assignment !== undefined) return access();
    try {
      return await access();
    } catch (error) {
      if (!(await this.#decodeMayHelp(error, region, offset, length))) throw error;
      const a = await this.assign();
      if (!a.bars.some((b) => b.index === region)) throw error;
    }
    return access();
  }

  /** EINVAL for an in-bounds access of a BAR that does not decode now. */
  async #decodeMayHelp(error: unknown, region: number, offset: bigint, length: number): Promise<boolean> {
    if (!(error instanceof RemoteError) || error.errno !== Errno.EINVAL) return false;
    const size = await this.#regionSize(region);
    if (size === 0n || offset + BigInt(length) > size) return false;
    try {
      return !(await barDecodes(this.client, region));
    } catch {
      return false;
    }
  }

  async #regionSize(region: number): Promise<bigint> {
    let size = this.#sizes.get(region);
    if (size === undefined) {
      try {
        const { info, fd } = await this.client.regionInfo(region);
        if (fd !== undefined) native.close(fd);
        size = info.size;
      } catch {
        size = 0n;
      }
      this.#sizes.set(region, size);
    }
    return size;
  }
}
