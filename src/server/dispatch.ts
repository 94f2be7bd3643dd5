/** The command table: one handler per client→server command. */
import { Command } from '../protocol/constants.js';
import type { RequestCommand } from '../protocol/request.js';
import type { Handler } from './types.js';
import { handleDmaMap, handleDmaUnmap } from './handlers/dma.js';
import { handleDeviceGetInfo, handleGetIrqInfo, handleGetRegionInfo, handleGetRegionIoFds, handleSetIrqs } from './handlers/info.js';
import { handleRegionRead, handleRegionWrite, handleRegionWriteMulti } from './handlers/region-access.js';
import { handleDeviceReset } from './handlers/device.js';
import { handleMigDataRead, handleMigDataWrite } from './handlers/migration.js';
import { handleDeviceFeature } from './handlers/feature.js';
import { ProtocolError } from '../errors.js';

/** Handlers by command (VERSION is the session's own business). */
export const HANDLERS: { readonly [C in RequestCommand]: Handler } = {
  [Command.VERSION]: () => {
    throw new ProtocolError('VERSION was already negotiated');
  },
  [Command.DMA_MAP]: handleDmaMap as Handler,
  [Command.DMA_UNMAP]: handleDmaUnmap as Handler,
  [Command.DEVICE_GET_INFO]: handleDeviceGetInfo as Handler,
  [Command.DEVICE_GET_REGION_INFO]: handleGetRegionInfo as Handler,
  [Command.DEVICE_GET_REGION_IO_FDS]: handleGetRegionIoFds as Handler,
  [Command.DEVICE_GET_IRQ_INFO]: handleGetIrqInfo as Handler,
  [Command.DEVICE_SET_IRQS]: handleSetIrqs as Handler,
  [Command.REGION_READ]: handleRegionRead as Handler,
  [Command.REGION_WRITE]: handleRegionWrite as Handler,
  [Command.DEVICE_RESET]: handleDeviceReset as Handler,
  [Command.REGION_WRITE_MULTI]: handleRegionWriteMulti as Handler,
  [Command.DEVICE_FEATURE]: handleDeviceFeature as Handler,
  [Command.MIG_DATA_READ]: handleMigDataRead as Handler,
  [Command.MIG_DATA_WRITE]: handleMigDataWrite as Handler,
};
