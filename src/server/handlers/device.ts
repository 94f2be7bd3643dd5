/** DEVICE_RESET. */
import { Command } from '../../protocol/constants.js';
import { ResetReason } from '../../device/types.js';
import type { DecodedRequest } from '../../protocol/request.js';
import type { Handler } from '../types.js';

type Req<C extends number> = Extract<DecodedRequest, { cmd: C }>;

/** DEVICE_RESET: the device's reset path (config space, interrupts state, the author's hook). */
export const handleDeviceReset: Handler<Req<typeof Command.DEVICE_RESET>> = async (ctx) => {
  await ctx.device.reset(ResetReason.CLIENT);
  return undefined;
};
