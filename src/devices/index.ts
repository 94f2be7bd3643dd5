/**
 * The sample devices: a GPIO card, a shared-memory device and a descriptor-ring
 * DMA engine (register maps and migration state layouts in each module and in
 * `docs/devices.md`), and the table the CLI's `serve` command picks them from.
 * All three are migratable (migration v2; the memory device with pre-copy).
 */
export { createGpioDevice, GpioReg, GPIO_PCI_ID, GPIO_BAR_SIZE, GPIO_CHANNELS, GPIO_DEVICE_TYPE, GPIO_STATE_VERSION, GPIO_STATE_SIZE } from './gpio.js';
export { createMemoryDevice, MemoryReg, MemoryCommand, MemoryStatus, MemoryIrqEnable, MEMORY_PCI_ID, MEMORY_DEFAULT_SIZE, MEMORY_MIN_SIZE, MEMORY_MAX_SIZE } from './memory.js';
export {
  MEMORY_DEVICE_TYPE,
  MEMORY_STATE_VERSION,
  MEMORY_STATE_HEADER_SIZE,
  MEMORY_MIGRATION_PAGE_SIZE,
  MemoryEncoding,
} from './memory-migration.js';
export {
  createDmaEngineDevice,
  DmaEngineReg,
  DmaEngineControl,
  DmaEngineStatus,
  DmaEngineVector,
  DMA_ENGINE_ID,
  DMA_ENGINE_PCI_ID,
  DMA_ENGINE_CHUNK,
  DMA_ENGINE_MAX_RING,
  DMA_ENGINE_DEVICE_TYPE,
  DMA_ENGINE_STATE_VERSION,
  DMA_ENGINE_STATE_SIZE,
} from './dma-engine.js';
export { DESCRIPTOR_SIZE, DescriptorFlags, DescriptorStatus, encodeDescriptor, decodeDescriptor, decodeResult, errorStatus } from './dma-descriptor.js';
export { fnv1a32, fnv1aUpdate, FNV1A_OFFSET_BASIS } from './fnv1a.js';
export { RegisterBlock, mergeLanes } from './register-block.js';

export type { GpioDevice, GpioOptions } from './gpio.js';
export type { MemoryDevice, MemoryOptions } from './memory.js';
export type { DmaEngineDevice, DmaEngineOptions, DmaEngineState } from './dma-engine.js';
export type { Descriptor, DescriptorResult } from './dma-descriptor.js';
export type { Register32 } from './register-block.js';
