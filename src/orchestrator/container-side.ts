/**
 * A client-library {@link Container} (one guest address space for several
 * device connections, docs/containers.md) as the source — or a local
 * destination — of {@link migrateContainer}: its attached devices, in attach
 * order, and the one guest memory it maps whole.
 */
import type { Container } from '../client/container.js';
import { InvalidArgumentError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import type { ContainerSide } from './types.js';

/**
 * The migration side of `container`: its devices (named `names[i]`, else
 * `dev<i>`) and its guest memory.
 * @throws {InvalidArgumentError} EINVAL when the container has no device, or does not map exactly one guest memory
 *   whole at one IOVA (a migration moves one guest RAM); EBUSY while its own dirty logging runs (the migration
 *   starts the devices' logging itself: stop the container's first).
 */
export function containerSide(container: Container, names: readonly string[] = []): ContainerSide {
  const { devices, mappings } = container;
  if (devices.length === 0) throw new InvalidArgumentError('containerSide: the container has no device');
  const mapping = mappings[0];
  if (mappings.length !== 1 || mapping === undefined || mapping.offset !== 0n || mapping.size !== mapping.memory.size) {
    throw new InvalidArgumentError(`containerSide: the container must map one guest memory whole (it has ${mappings.length} mapping(s))`);
  }
  if (container.logging) throw new InvalidArgumentError('containerSide: the container logs dirty pages itself: stop its logging first', { errno: Errno.EBUSY });
  return {
    memory: mapping.memory,
    iova: mapping.iova,
    devices: devices.map((client, i) => (names[i] === undefined ? { client } : { name: names[i], client })),
  };
}
