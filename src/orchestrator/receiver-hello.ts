/**
 * The receiver's reading of a sender's `hello` (channel.ts): the channel
 * version, the guest memory offered and the devices, checked before anything
 * is prepared.
 */
import { Errno } from '../protocol/errno.js';
import { CHANNEL_DEVICE_NAME, ChannelFeature, HelloVersion, MAX_CHANNEL_DEVICES } from './channel.js';
import { MigrationChannelError } from './channel-socket.js';

/** The name of the only device of a version-1 hello that names none (the orchestrator's default name of device 0). */
export const SINGLE_DEVICE_NAME = 'dev0';

/** A checked hello. */
export interface Hello {
  version: number;
  memory: { size: bigint; iova: bigint };
  devices: Array<{ name: string }>;
  /** The offered features this receiver takes. */
  features: string[];
}

/**
 * Checks a hello's arguments.
 * @throws {MigrationChannelError} EPROTO for a channel version not spoken here (1, 2) or several devices
 *   in a version-1 hello; EINVAL for bad memory bounds or device names (repeated, malformed, none, too many);
 *   ENOMEM for more guest memory than `maxMemoryBytes`.
 */
export function readHello(args: Record<string, unknown>, maxMemoryBytes: bigint): Hello {
  const version = args.channelVersion;
  if (version !== HelloVersion.SINGLE && version !== HelloVersion.MULTI) {
    throw new MigrationChannelError(`channel version ${String(version)} is not spoken here (${HelloVersion.SINGLE}, ${HelloVersion.MULTI})`, Errno.EPROTO);
  }
  const memory = args.memory as { size?: unknown; iova?: unknown } | undefined;
  if (typeof memory?.size !== 'bigint' || typeof memory.iova !== 'bigint' || memory.size <= 0n || memory.size % 4096n !== 0n || memory.iova < 0n || memory.iova % 4096n !== 0n || memory.iova + memory.size > 1n << 64n) {
    throw new MigrationChannelError('guest memory must be a positive number of 4 KiB pages at a page-aligned 64-bit IOVA', Errno.EINVAL);
  }
  if (memory.size > maxMemoryBytes) throw new MigrationChannelError(`guest memory of ${memory.size} bytes exceeds this receiver's ${maxMemoryBytes}`, Errno.ENOMEM);
  const offered = Array.isArray(args.features) ? args.features : [];
  const features = Object.values(ChannelFeature).filter((f) => offered.includes(f));
  return { version, memory: { size: memory.size, iova: memory.iova }, devices: readDevices(version, args.devices), features };
}

function readDevices(version: number, devices: unknown): Array<{ name: string }> {
  if (devices === undefined && version === HelloVersion.SINGLE) return [{ name: SINGLE_DEVICE_NAME }];
  if (!Array.isArray(devices) || devices.length === 0) throw new MigrationChannelError('devices: a list of 1 or more {name} is required', Errno.EINVAL);
  if (devices.length > 1 && version === HelloVersion.SINGLE) throw new MigrationChannelError(`${devices.length} devices need channel version ${HelloVersion.MULTI}`, Errno.EPROTO);
  if (devices.length > MAX_CHANNEL_DEVICES) throw new MigrationChannelError(`${devices.length} devices: at most ${MAX_CHANNEL_DEVICES} per migration`, Errno.EINVAL);
  const names = devices.map((d: unknown, i) => {
    const name = (d as { name?: unknown } | null)?.name;
    if (typeof name !== 'string' || !CHANNEL_DEVICE_NAME.test(name)) throw new MigrationChannelError(`device ${i}: '${String(name)}' is not a device name (1..64 of A-Z a-z 0-9 . _ : -)`, Errno.EINVAL);
    return name;
  });
  const repeated = names.find((n, i) => names.indexOf(n) !== i);
  if (repeated !== undefined) throw new MigrationChannelError(`device name '${repeated}' is offered twice`, Errno.EINVAL);
  return names.map((name) => ({ name }));
}
