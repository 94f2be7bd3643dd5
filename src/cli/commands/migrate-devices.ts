/**
 * The devices of a container migration on the command line: repeated
 * `--from [NAME=]SOCKET` / `--to [NAME=]SOCKET` (`vfio-user migrate`) and
 * `--socket [NAME=]PATH` (`vfio-user migrate-listen`), and how a receiver
 * pairs the devices a sender offers with its own: by name when its sockets
 * are named, else by order. A container's sessions share one guest RAM,
 * attached to every device at the same IOVA (one I/O address space).
 */
import { VfioUserClient } from '../../client/client.js';
import { GuestMemory } from '../../client/guest-memory.js';
import { RemoteError } from '../../errors.js';
import { CHANNEL_DEVICE_NAME, MAX_CHANNEL_DEVICES } from '../../orchestrator/channel.js';
import type { MigrationOffer, PreparedDestination } from '../../orchestrator/receiver.js';
import { Errno } from '../../protocol/errno.js';
import { CliError, errorReason, socketPathProblem } from '../common.js';

/** One device on the command line. */
export interface DeviceSpec {
  /** Given as `NAME=…`, else undefined (the orchestrator then names it `dev<i>`). */
  name: string | undefined;
  socket: string;
}

/** `NAME=` before a socket path: a device name (no `/`), then `=`. */
const NAMED = /^([^=/]+)=(.+)$/;

/** A commander option given once (a string) or repeatedly (`<x...>`: an array) as a list. */
export function optionList(value: string | readonly string[] | undefined): string[] {
  if (value === undefined) return [];
  return typeof value === 'string' ? [value] : [...value];
}

/**
 * Parses `[NAME=]SOCKET` options.
 * @throws {CliError} EINVAL for a malformed or repeated name, more than 32 devices, names on some devices only,
 *   or a socket given twice.
 */
export function parseDeviceSpecs(values: readonly string[], option: string): DeviceSpec[] {
  if (values.length > MAX_CHANNEL_DEVICES) throw new CliError(`${option}: ${values.length} devices; a migration carries at most ${MAX_CHANNEL_DEVICES}`, { errno: Errno.EINVAL });
  const specs = values.map((v) => {
    const m = NAMED.exec(v);
    if (m === null) return { name: undefined, socket: v };
    const name = m[1] as string;
    if (!CHANNEL_DEVICE_NAME.test(name)) throw new CliError(`${option} ${v}: '${name}' is not a device name (1..64 of A-Z a-z 0-9 . _ : -)`, { errno: Errno.EINVAL });
    return { name, socket: m[2] as string };
  });
  const named = specs.filter((s) => s.name !== undefined).length;
  if (named !== 0 && named !== specs.length) throw new CliError(`${option}: name every device (NAME=SOCKET) or none`, { errno: Errno.EINVAL });
  const names = specs.map((s) => s.name);
  const twice = names.find((n, i) => n !== undefined && names.indexOf(n) !== i);
  if (twice !== undefined) throw new CliError(`${option}: device name '${twice}' is given twice`, { errno: Errno.EINVAL });
  const sockets = specs.map((s) => s.socket);
  const again = sockets.find((s, i) => sockets.indexOf(s) !== i);
  if (again !== undefined) throw new CliError(`${option}: socket ${again} is given twice`, { errno: Errno.EINVAL });
  return specs;
}

/** Device `i`'s name as the orchestrator reports it. */
export const specName = (spec: DeviceSpec, i: number): string => spec.name ?? `dev${i}`;

/** How `devices` read in a message: `nic=/a.sock, disk=/b.sock`, or just the socket of one unnamed device. */
export function describeSpecs(devices: readonly DeviceSpec[]): string {
  return devices.map((d) => (d.name === undefined ? d.socket : `${d.name}=${d.socket}`)).join(', ');
}

/**
 * The receiver's device for each offered one, in the offer's order: by name
 * when this receiver's devices are named, else by order (one device each: paired).
 * @throws {CliError} EINVAL when the counts differ or an offered name has no device here (the offer is refused).
 */
export function matchOffer(offer: MigrationOffer, devices: readonly DeviceSpec[]): DeviceSpec[] {
  const wanted = offer.devices.map((d) => d.name);
  if (wanted.length !== devices.length) {
    throw new CliError(`the sender offers ${wanted.length} device(s) (${wanted.join(', ')}), this receiver has ${devices.length} (${describeSpecs(devices)})`, { errno: Errno.EINVAL });
  }
  if (devices.length === 1 || devices.every((d) => d.name === undefined)) return [...devices]; // one device each: paired whatever its name
  return wanted.map((name) => {
    const found = devices.find((d) => d.name === name);
    if (found === undefined) throw new CliError(`the sender offers device '${name}'; this receiver has none of that name (${describeSpecs(devices)})`, { errno: Errno.EINVAL });
    return found;
  });
}

/** Connects to a destination device, retrying (until `timeoutMs`) only while it still serves a previous session (EBUSY). */
export async function connectDevice(socket: string, timeoutMs: number): Promise<VfioUserClient> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      return await VfioUserClient.connect(socket, { timeoutMs, connectTimeoutMs: timeoutMs });
    } catch (error) {
      const busy = error instanceof RemoteError && error.errno === Errno.EBUSY;
      if (!busy || performance.now() > deadline) throw new CliError(`destination device ${socket}: ${socketPathProblem(socket) ?? errorReason(error)}`, { cause: error });
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

/**
 * A receiver's destination for an offer: a session with each device (`devices`, in the offer's order)
 * and one guest RAM of the offered size, DMA-mapped with its fd at the offered IOVA for every device.
 * @throws {CliError} a device that cannot be reached (its reason); a DMA_MAP refused (the server's errno). Nothing is left open.
 */
export async function prepareDevices(offer: MigrationOffer, devices: readonly DeviceSpec[], timeoutMs: number): Promise<PreparedDestination> {
  const clients: VfioUserClient[] = [];
  const memory = GuestMemory.create(offer.memory.size, { name: 'migrate-listen-ram' });
  try {
    for (const d of devices) {
      const client = await connectDevice(d.socket, timeoutMs);
      clients.push(client);
      await memory.attach(client, { iova: offer.memory.iova, mode: 'fd' });
    }
  } catch (error) {
    for (const c of clients) c.close();
    memory.dispose();
    throw error;
  }
  const side = { client: clients[0] as VfioUserClient, memory, iova: offer.memory.iova };
  const prepared: PreparedDestination = { side, ...(clients.length > 1 ? { clients } : {}), release: () => releasePrepared(prepared) };
  return prepared;
}

/** Releases a destination: every session ends (each device resets), the guest RAM is freed. */
export async function releasePrepared(prepared: PreparedDestination): Promise<void> {
  for (const c of prepared.clients ?? [prepared.side.client]) c.close();
  prepared.side.memory.dispose();
  await new Promise((resolve) => setTimeout(resolve, 20));
}
