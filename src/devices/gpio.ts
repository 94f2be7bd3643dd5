/**
 * A 16-in / 16-out GPIO card modelled on the ACCES PCI-IDIO-16, the card
 * libvfio-user's `samples/gpio-pci-idio-16.c` impersonates: vendor 0x494f,
 * device 0x0dc8, subsystem 0:0, class code 0x118000 (signal processing
 * controller; the sample sets none, and Linux assigns no BARs to a classless
 * device hot-plugged into a running guest), one 256-byte I/O-port BAR2 of
 * registers (as on the card and in the sample) and INTx (plus one MSI vector, so a driver that
 * enables MSI gets the same interrupt there).
 *
 * The input lines are simulated: the program hosting the device drives them
 * with {@link GpioDevice.setInput}. A change on an input whose interrupt is
 * enabled latches its bit in the interrupt status and raises interrupt 0
 * (INTx, or MSI/MSI-X if the driver enabled it) when new bits latch. INTx is a
 * level: the device asserts it while any status bit is set and deasserts it
 * (PCI Status bit 3) when the driver clears the last one.
 *
 * BAR2 register map (I/O BAR, any access width; reserved bytes read 0 and
 * ignore writes). 0x00–0x06 are byte registers laid out as on the real card:
 *
 * | off  | name         | access | meaning |
 * |------|--------------|--------|---------|
 * | 0x00 | OUT0_7       | RW     | outputs 0–7 |
 * | 0x01 | IN0_7        | R / W  | read: inputs 0–7; write (any value): clear all interrupt status |
 * | 0x02 | IRQ_CTL      | R / W  | read: disable change-of-state interrupts on all inputs (reads 0); write (any value): enable them on all inputs |
 * | 0x03 | FILTER_CTL   | RW     | input filter latch (stored, no effect) |
 * | 0x04 | OUT8_15      | RW     | outputs 8–15 |
 * | 0x05 | IN8_15       | R / W  | read: inputs 8–15; write (any value): clear all interrupt status |
 * | 0x06 | IRQ_STATUS_B | R      | bit 0: a status bit of inputs 0–7 is set; bit 1: of inputs 8–15; bit 2: any |
 *
 * 0x10–0x1f are 32-bit per-channel registers over the same state (bits 31:16 read 0):
 *
 * | off  | name       | access | meaning |
 * |------|------------|--------|---------|
 * | 0x10 | OUTPUT     | RW     | outputs 15:0 |
 * | 0x14 | INPUT      | RO     | inputs 15:0 |
 * | 0x18 | IRQ_ENABLE | RW     | change-of-state interrupt enable per input |
 * | 0x1c | IRQ_STATUS | RW1C   | latched changes of enabled inputs; write 1 to clear |
 *
 * Reset (DEVICE_RESET or client disconnect) clears outputs, enables, status and
 * the filter latch; the input lines keep their levels (they are external).
 *
 * Migration (v2, STOP_COPY and P2P; no PRE_COPY: the state is 12 bytes). Device
 * type `gpio-pci-idio-16`, state version 1, little-endian:
 *
 * | off | size | field |
 * |-----|------|-------|
 * | 0   | 2    | inputs 15:0 as the device last sampled them |
 * | 2   | 2    | outputs 15:0 |
 * | 4   | 2    | IRQ_ENABLE |
 * | 6   | 2    | IRQ_STATUS (latched changes) |
 * | 8   | 1    | FILTER_CTL latch |
 * | 9   | 3    | reserved, 0 |
 *
 * Quiesce: in STOP, STOP_COPY, RESUMING (and ERROR) the card stops sampling its
 * input lines — {@link GpioDevice.setInput} only records the new level — so no
 * status bit latches and no interrupt is raised; BAR2 writes are ignored and
 * reads have no side effect (reading IRQ_CTL does not disable interrupts).
 * When the card operates again it samples the lines: changed enabled inputs
 * latch and interrupt as usual. RUNNING_P2P is plain running (the card does no
 * DMA). `load` makes the restored input levels the current line levels and
 * restores the outputs silently; `onOutputChange` reports them when the card
 * next operates.
 */
import { InvalidArgumentError } from '../errors.js';
import { createDevice, type VfioUserDevice } from '../device/device.js';
import type { MigrationDefinition } from '../migration/types.js';
import { MigrationState } from '../protocol/constants.js';
import type { Logger } from '../log.js';
import { RunState, openState, reserved } from './migration-support.js';
import { RegisterBlock, mergeLanes } from './register-block.js';

/** BAR2 register offsets of the GPIO card. */
export const GpioReg = {
  OUT0_7: 0x00,
  IN0_7: 0x01,
  IRQ_CTL: 0x02,
  FILTER_CTL: 0x03,
  OUT8_15: 0x04,
  IN8_15: 0x05,
  IRQ_STATUS_BYTE: 0x06,
  OUTPUT: 0x10,
  INPUT: 0x14,
  IRQ_ENABLE: 0x18,
  IRQ_STATUS: 0x1c,
} as const;
/** One of {@link GpioReg}. */
export type GpioReg = (typeof GpioReg)[keyof typeof GpioReg];

/**
 * PCI identity of the card: libvfio-user's sample's ids, with class 0x118000
 * (signal processing controller, other) where the sample has none.
 */
export const GPIO_PCI_ID = { vendorId: 0x494f, deviceId: 0x0dc8, classCode: 0x118000 } as const;
/** Size of BAR2. */
export const GPIO_BAR_SIZE = 0x100;
/** Input and output channels. */
export const GPIO_CHANNELS = 16;
/** Device type in the migration stream. */
export const GPIO_DEVICE_TYPE = 'gpio-pci-idio-16';
/** Version of the migration state layout (module TSDoc). */
export const GPIO_STATE_VERSION = 1;
/** Size of the migration state. */
export const GPIO_STATE_SIZE = 12;

const CHANNEL_MASK = 0xffff;

/** Options of {@link createGpioDevice}. */
export interface GpioOptions {
  /** Device name for logs (default `gpio-pci-idio-16`). */
  name?: string;
  logger?: Logger;
  /** Initial input levels, bit n = channel n (default 0). */
  inputs?: number;
  /** Called after the driver changed the outputs. Must not throw. */
  onOutputChange?: (outputs: number, previous: number) => void;
}

/** The GPIO card and the host program's side of it. */
export interface GpioDevice {
  readonly device: VfioUserDevice;
  /**
   * Drives input line `channel` (0–15) to `level`.
   * @throws {InvalidArgumentError} EINVAL for a channel outside 0–15.
   */
  setInput(channel: number, level: boolean): void;
  /** Input levels as the card sees them, bit n = channel n (while it is stopped, changes of the lines wait until it runs). */
  readonly inputs: number;
  /** Output levels the driver set, bit n = channel n. */
  readonly outputs: number;
  /** Inputs whose change-of-state interrupt is enabled. */
  readonly irqEnable: number;
  /** Latched, not yet cleared input changes. */
  readonly irqStatus: number;
}

/** The card's registers and line state. */
class GpioState {
  /** Input levels as the card last sampled them (what INPUT reads). */
  inputs: number;
  /** Levels of the external lines; sampled into `inputs` while the card operates. */
  lines: number;
  outputs = 0;
  enable = 0;
  status = 0;
  filter = 0;
  readonly run = new RunState();
  /** Set right after the device is created. */
  device!: VfioUserDevice;
  /** Outputs last reported through `onOutputChange`. */
  #announced = 0;
  readonly #onOutputChange: ((outputs: number, previous: number) => void) | undefined;

  constructor(options: GpioOptions) {
    this.inputs = (options.inputs ?? 0) & CHANNEL_MASK;
    this.lines = this.inputs;
    this.#onOutputChange = options.onOutputChange;
  }

  setInput(channel: number, level: boolean): void {
    if (!Number.isInteger(channel) || channel < 0 || channel >= GPIO_CHANNELS) {
      throw new InvalidArgumentError(`GPIO setInput: channel ${channel} outside 0–${GPIO_CHANNELS - 1}`);
    }
    const bit = 1 << channel;
    this.lines = level ? this.lines | bit : this.lines & ~bit;
    if (!this.run.stopped) this.#sample();
  }

  /** Takes the line levels in; changed enabled inputs latch. */
  #sample(): void {
    const changed = this.lines ^ this.inputs;
    if (changed === 0) return;
    this.inputs = this.lines;
    if ((changed & this.enable) !== 0) this.latch(changed & this.enable);
  }

  latch(bits: number): void {
    const fresh = bits & ~this.status;
    this.status |= bits;
    if (fresh !== 0) this.device.interrupt(0);
  }

  setOutputs(value: number): void {
    this.outputs = value & CHANNEL_MASK;
    if (!this.run.stopped) this.#announce();
  }

  #announce(): void {
    const previous = this.#announced;
    if (this.outputs === previous) return;
    this.#announced = this.outputs;
    this.#onOutputChange?.(this.outputs, previous);
  }

  clearStatus(bits: number): void {
    const had = this.status;
    this.status &= ~bits & CHANNEL_MASK;
    if (had !== 0 && this.status === 0) this.#deassert();
  }

  statusByte(): number {
    return ((this.status & 0xff) !== 0 ? 1 : 0) | ((this.status & 0xff00) !== 0 ? 2 : 0) | (this.status !== 0 ? 4 : 0);
  }

  reset(): void {
    this.setOutputs(0);
    this.enable = 0;
    this.filter = 0;
    this.clearStatus(CHANNEL_MASK);
    this.#enter(this.device.migration?.state ?? MigrationState.RUNNING);
  }

  /** The migration hooks over this state. */
  migration(): MigrationDefinition {
    return {
      p2p: true,
      deviceType: GPIO_DEVICE_TYPE,
      stateVersion: GPIO_STATE_VERSION,
      save: () => this.#save(),
      load: (kind, payload) => this.#load(kind, payload),
      transition: (_from, to) => this.#enter(to),
      stopCopySize: () => GPIO_STATE_SIZE,
    };
  }

  #enter(state: number): void {
    if (!this.run.enter(state)) return;
    this.#announce();
    this.#sample();
  }

  #save(): Uint8Array {
    const out = new Uint8Array(GPIO_STATE_SIZE);
    const v = new DataView(out.buffer);
    v.setUint16(0, this.inputs, true);
    v.setUint16(2, this.outputs, true);
    v.setUint16(4, this.enable, true);
    v.setUint16(6, this.status, true);
    v.setUint8(8, this.filter);
    return out;
  }

  #load(kind: 'full' | 'delta', payload: Uint8Array): void {
    const r = openState(`${GPIO_DEVICE_TYPE} state v${GPIO_STATE_VERSION}`, payload, GPIO_STATE_SIZE);
    if (kind !== 'full') throw r.error(`a '${kind}' record, but this device sends its whole state in one 'full' record`);
    const inputs = r.u16('inputs');
    const outputs = r.u16('outputs');
    const enable = r.u16('irq enable');
    const status = r.u16('irq status');
    const filter = r.u8('filter');
    reserved(r, 3);
    Object.assign(this, { inputs, lines: inputs, outputs, enable, status, filter });
  }

  #deassert(): void {
    const config = this.device.config;
    if (config.interruptPin !== 0) config.setIntxAsserted(false);
  }
}

/** The BAR2 registers over `s`. */
function gpioRegisters(s: GpioState): RegisterBlock {
  const lane = (value: number, n: number): number => (value >>> (8 * n)) & 0xff;
  const has = (mask: number, n: number): boolean => (mask & (0xff << (8 * n))) !== 0;
  return new RegisterBlock('gpio BAR2', GPIO_BAR_SIZE, {
    0x00: {
      read(mask) {
        if (has(mask, 2) && !s.run.stopped) s.enable = 0; // reading IRQ_CTL disables the interrupts, as on the card
        return (s.outputs & 0xff) | ((s.inputs & 0xff) << 8) | (s.filter << 24);
      },
      write(value, mask) {
        if (has(mask, 0)) s.setOutputs((s.outputs & 0xff00) | lane(value, 0));
        if (has(mask, 1)) s.clearStatus(CHANNEL_MASK);
        if (has(mask, 2)) s.enable = CHANNEL_MASK;
        if (has(mask, 3)) s.filter = lane(value, 3);
      },
    },
    0x04: {
      read: () => ((s.outputs >>> 8) & 0xff) | (((s.inputs >>> 8) & 0xff) << 8) | (s.statusByte() << 16),
      write(value, mask) {
        if (has(mask, 0)) s.setOutputs((s.outputs & 0xff) | (lane(value, 0) << 8));
        if (has(mask, 1)) s.clearStatus(CHANNEL_MASK);
      },
    },
    [GpioReg.OUTPUT]: { read: () => s.outputs, write: (value, mask) => s.setOutputs(mergeLanes(s.outputs, value, mask)) },
    [GpioReg.INPUT]: { read: () => s.inputs },
    [GpioReg.IRQ_ENABLE]: { read: () => s.enable, write: (value, mask) => void (s.enable = mergeLanes(s.enable, value, mask) & CHANNEL_MASK) },
    [GpioReg.IRQ_STATUS]: { read: () => s.status, write: (value, mask) => s.clearStatus(value & mask) },
  });
}

/**
 * Creates the GPIO card.
 * @returns the device (serve it with `device.serve(path)`) and the host side of its lines.
 */
export function createGpioDevice(options: GpioOptions = {}): GpioDevice {
  const state = new GpioState(options);
  const registers = gpioRegisters(state);
  const device = createDevice({
    name: options.name ?? 'gpio-pci-idio-16',
    ...(options.logger ? { logger: options.logger } : {}),
    pci: { ...GPIO_PCI_ID },
    regions: {
      bar2: {
        size: GPIO_BAR_SIZE,
        type: 'io', // as on the real card and in libvfio-user's sample
        read: (offset, length) => registers.read(offset, length),
        write: (offset, data) => {
          if (!state.run.stopped) registers.write(offset, data); // a stopped card changes no state
        },
      },
    },
    irqs: { intx: true, msi: 1 },
    reset: () => state.reset(),
    migration: state.migration(),
  });
  state.device = device;
  return {
    device,
    setInput: (channel, level) => state.setInput(channel, level),
    get inputs() {
      return state.inputs;
    },
    get outputs() {
      return state.outputs;
    },
    get irqEnable() {
      return state.enable;
    },
    get irqStatus() {
      return state.status;
    },
  };
}
