/**
 * DEVICE_RESET, and the migration commands for a device without migration
 * (DEVICE_FEATURE, MIG_DATA_READ/WRITE): refused with EINVAL, as libvfio-user
 * refuses every feature of a device that registered no migration callbacks.
 */
import { ProtocolError } from '../../errors.js';
import { Command, commandName } from '../../protocol/constants.js';
import { ResetReason } from '../../device/types.js';
import type { DecodedRequest } from '../../protocol/request.js';
import type { Handler } from '../types.js';

type Req<C extends number> = Extract<DecodedRequest, { cmd: C }>;

/** DEVICE_RESET: the device's reset path (config space, interrupts state, the author's hook). */
export const handleDeviceReset: Handler<Req<typeof Command.DEVICE_RESET>> = async (ctx) => {
  await ctx.device.reset(ResetReason.CLIENT);
  return undefined;
};

/** Commands that need migration support, for a device that has none. */
export const handleWithoutMigration: Handler = (_ctx, request) => {
  throw new ProtocolError(`${commandName(request.cmd)}: the device does not support migration`);
};
