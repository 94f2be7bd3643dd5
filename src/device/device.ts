/**
 * A realized device: what `createDevice(definition)` returns. It owns config
 * space, regions, interrupts and (while a client is connected) the DMA
 * controller, implements the server's {@link SessionDevice} contract, and is
 * what device code talks to: `interrupt()`, `dma`, `regionMemory()`.
 *
 * Region info and region access go through overridable methods
 * (`regionInfo`, `regionRead`, `regionWrite`) so a wrapper can interpose.
 */
import { StateError } from '../errors.js';
import { DeviceInfoFlags, IrqIndex, MigrationState, NUM_IRQS, NUM_REGIONS, RegionIndex, RegionInfoFlags } from '../protocol/constants.js';
import { MigrationController } from '../migration/controller.js';
import { migrationFeatures } from '../server/handlers/migration.js';
import type { FeatureTable } from '../server/features.js';
import { Errno } from '../protocol/errno.js';
import { ConfigSpace } from '../pci/config-space.js';
import { getDefaultLogger, type Logger } from '../log.js';
import { DeviceServer, type ServeOptions } from '../server/server.js';
import type { IoEventFdDescription, RegionDescription, SessionDevice } from '../server/types.js';
import type { DmaController, DmaRegion } from './dma.js';
import { IrqController } from './irqs.js';
import { buildRegions, type Region } from './regions.js';
import { configSpaceOptions, interruptStateOf, msixCarveOut, msixWindow } from './realize.js';
import type { DeviceDefinition, ResetReason } from './types.js';

const NO_FEATURES: FeatureTable = new Map();

/** A device ready to be served. */
export class VfioUserDevice implements SessionDevice {
  readonly name: string;
  readonly logger: Logger;
  readonly definition: DeviceDefinition;
  /** The emulated PCI configuration space (region 7). */
  readonly config: ConfigSpace;
  readonly irqs: IrqController;
  readonly numRegions = NUM_REGIONS;
  readonly numIrqs = NUM_IRQS;
  readonly infoFlags = DeviceInfoFlags.PCI | DeviceInfoFlags.RESET;
  /** The migration state machine, when the definition declares `migration`. */
  readonly migration: MigrationController | undefined;
  readonly #features: FeatureTable | undefined;
  readonly #regions: (Region | undefined)[];
  #dma: DmaController | undefined;

  /**
   * Validates the definition and builds the device (use {@link createDevice}).
   * @throws {InvalidArgumentError} EINVAL for an inconsistent definition (BAR sizes, MSI-X placement, …).
   */
  constructor(definition: DeviceDefinition) {
    this.definition = definition;
    this.name = definition.name ?? `${hex4(definition.pci.vendorId)}:${hex4(definition.pci.deviceId)}`;
    this.logger = (definition.logger ?? getDefaultLogger()).child({ device: this.name });
    this.config = new ConfigSpace(configSpaceOptions(definition, this.logger));
    this.#regions = buildRegions(definition, (bar) => msixCarveOut(definition, bar), this.logger);
    const msix = definition.msix;
    const msixRegion = msix ? this.#regions[msix.bar] : undefined;
    if (msixRegion) msixRegion.msix = msixWindow(this.config);
    const irq = definition.irqs ?? {};
    this.irqs = new IrqController([irq.intx ? 1 : 0, irq.msi ?? 0, irq.msix ?? 0, (irq.err ?? true) ? 1 : 0, (irq.req ?? true) ? 1 : 0], interruptStateOf(this.config));
    this.migration = definition.migration ? new MigrationController(definition.migration, this.config, definition.pci, () => this.irqs.adoptPending()) : undefined;
    this.#features = this.migration ? migrationFeatures(this.migration) : undefined;
    this.config.onChange((event) => {
      if (event.type === 'msi-unmask' || event.type === 'msix-unmask' || event.type === 'interrupt-mode') this.irqs.refreshPending();
    });
  }

  /**
   * The DMA controller of the connected client (guest memory by IOVA).
   * @throws {StateError} ENOTCONN when no client is connected.
   */
  get dma(): DmaController {
    if (!this.#dma) throw new StateError(`${this.name}: no client is connected, so there is no guest memory`, { errno: Errno.ENOTCONN });
    return this.#dma;
  }

  /** Whether a client is connected and `dma` usable (false from the moment its session starts tearing down). */
  get connected(): boolean {
    return this.#dma !== undefined && !this.#dma.closed;
  }

  /**
   * Raises interrupt `vector` as the guest configured it (MSI-X, MSI or INTx);
   * masked vectors stay pending until unmasked.
   * @returns true if an eventfd was signalled.
   */
  interrupt(vector = 0): boolean {
    return this.irqs.interrupt(vector);
  }

  /**
   * Deasserts the INTx line (level-triggered devices call this once the cause
   * is cleared): clears Status bit 3. A no-op without an interrupt pin.
   */
  deassertIntx(): void {
    this.irqs.deassertIntx();
  }

  /** Signals the client's ERR eventfd (vfio error reporting). @returns true if installed. */
  reportError(): boolean {
    return this.irqs.notify(IrqIndex.ERR);
  }

  /** Asks the client to release the device (vfio REQ eventfd). @returns true if installed. */
  requestRelease(): boolean {
    return this.irqs.notify(IrqIndex.REQ);
  }

  /**
   * The shared memory behind region `index`, mapped in this process.
   * @throws {StateError} EINVAL if the region is not declared `shared`.
   */
  regionMemory(index: number): Uint8Array {
    const memory = this.#regions[index]?.memory;
    if (!memory) throw new StateError(`${this.name}: region ${index} has no shared memory`);
    return memory;
  }

  /**
   * Serves the device on a UNIX socket path, or on an already listening
   * socket (`options.listenFd`, e.g. in a device host's worker thread).
   * @throws {SystemError} EADDRINUSE if the path is served by someone else;
   *   with `listenFd`: EINVAL (not listening), ENOTSOCK, EBADF.
   */
  serve(options: ServeOptions | string): DeviceServer {
    return DeviceServer.listen(this, typeof options === 'string' ? { path: options } : options);
  }

  regionInfo(index: number): RegionDescription | undefined {
    if (index === RegionIndex.CONFIG) {
      return { flags: RegionInfoFlags.READ | RegionInfoFlags.WRITE, size: BigInt(this.config.size), fdOffset: 0n };
    }
    return this.#regions[index]?.describe();
  }

  regionIoEventFds(index: number): readonly IoEventFdDescription[] {
    return this.#regions[index]?.describeIoEventFds() ?? [];
  }

  regionRead(index: number, offset: number, count: number): Uint8Array | Promise<Uint8Array> {
    if (index === RegionIndex.CONFIG) return this.config.read(offset, count);
    return (this.#regions[index] as Region).read(offset, count);
  }

  regionWrite(index: number, offset: number, data: Uint8Array): void | Promise<void> {
    if (index === RegionIndex.CONFIG) return this.config.write(offset, data);
    return (this.#regions[index] as Region).write(offset, data);
  }

  attach(dma: DmaController): void {
    this.#dma = dma;
  }

  features(): FeatureTable {
    return this.#features ?? NO_FEATURES;
  }

  dmaMapped(region: DmaRegion): void {
    this.definition.dma?.onMap?.(region);
  }

  dmaUnmapping(region: DmaRegion): void {
    this.definition.dma?.onUnmap?.(region);
  }

  async reset(reason: ResetReason): Promise<void> {
    // DEVICE_RESET is the way out of ERROR; otherwise the migration state is kept (libvfio-user, #844).
    if (reason === 'client' && this.migration?.state === MigrationState.ERROR) this.migration.reset();
    this.config.reset();
    this.irqs.clearPending();
    if (reason === 'lost-connection') this.irqs.reset();
    await this.definition.reset?.(reason);
  }

  detach(): void {
    this.#dma = undefined;
  }

  /** Releases shared memory. The device must not be served any more. */
  dispose(): void {
    for (const r of this.#regions) r?.dispose();
  }
}

/**
 * Validates `definition` and builds the device.
 * @throws {InvalidArgumentError} EINVAL for an inconsistent definition.
 */
export function createDevice(definition: DeviceDefinition): VfioUserDevice {
  return new VfioUserDevice(definition);
}

function hex4(n: number): string {
  return n.toString(16).padStart(4, '0');
}
