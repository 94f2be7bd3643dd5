/**
 * The sample devices: a GPIO card, a shared-memory device and a descriptor-ring
 * DMA engine (register maps in each module and in `docs/devices.md`), and the
 * table the CLI's `serve` command picks them from.
 */
export { createGpioDevice, GpioReg, GPIO_PCI_ID, GPIO_BAR_SIZE, GPIO_CHANNELS } from './gpio.js';
export { createMemoryDevice, MemoryReg, MemoryCommand, MemoryStatus, MEMORY_PCI_ID, MEMORY_DEFAULT_SIZE, MEMORY_MIN_SIZE, MEMORY_MAX_SIZE } from './memory.js';
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
} from './dma-engine.js';
export { DESCRIPTOR_SIZE, DescriptorFlags, DescriptorStatus, encodeDescriptor, decodeDescriptor, decodeResult, errorStatus } from './dma-descriptor.js';
export { fnv1a32, fnv1aUpdate, FNV1A_OFFSET_BASIS } from './fnv1a.js';
export { RegisterBlock, mergeLanes } from './register-block.js';

export type { GpioDevice, GpioOptions } from './gpio.js';
export type { MemoryDevice, MemoryOptions } from './memory.js';
export type { DmaEngineDevice, DmaEngineOptions, DmaEngineState } from './dma-engine.js';
export type { Descriptor, DescriptorResult } from './dma-descriptor.js';
export type { Register32 } from './register-block.js';
