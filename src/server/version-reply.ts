/**
 * The VERSION reply, sized for the client that asked. QEMU (10.1–10.2)
 * receives the reply into the buffer of its own request and fails the whole
 * attach when the reply is longer ("reply larger than recv buffer"), so the
 * reply is never longer than the request, for any client. Members whose
 * absence the client reads as a safe default are given up one by one until it
 * fits: an absent member means the specification's default, which is never
 * more than this server allows.
 */
import { ProtocolError } from '../errors.js';
import { DEFAULT_MAX_DATA_XFER_SIZE, DEFAULT_MAX_DMA_MAPS, DEFAULT_MAX_MSG_FDS, DEFAULT_PGSIZES } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import { encodeVersion } from '../protocol/version.js';
import type { Capabilities } from '../protocol/capabilities.js';

/**
 * One member the reply can do without: `applies` says whether omitting it is
 * safe (the client's default is within what we allow), `drop` removes it.
 */
interface Omission {
  name: string;
  applies(c: Capabilities): boolean;
  drop(c: Capabilities): void;
}

/**
 * Omissions in the order they are made: first what only costs an optional
 * feature (top-level extensions, migration extensions, write_multiple, the twin socket), then limits whose
 * default is smaller than ours (the client just does less per message),
 * migration (the client then sees a device that does not migrate), and last a
 * `max_dma_maps` below the default (the client learns the limit from EINVAL).
 */
const OMISSIONS: readonly Omission[] = [
  // Top-level extension members (x-isolation-group): clients that do not know them (QEMU) only warn about them.
  { name: 'extensions', applies: (c) => c.extra !== undefined, drop: (c) => delete c.extra },
  {
    name: 'migration extensions',
    applies: (c) => c.migration?.extra !== undefined,
    drop: (c) => {
      if (c.migration) delete c.migration.extra;
    },
  },
  { name: 'write_multiple', applies: (c) => c.writeMultiple !== undefined, drop: (c) => delete c.writeMultiple },
  { name: 'twin_socket', applies: (c) => c.twinSocket !== undefined, drop: (c) => delete c.twinSocket },
  {
    name: 'max_dma_maps',
    applies: (c) => c.maxDmaMaps !== undefined && c.maxDmaMaps >= DEFAULT_MAX_DMA_MAPS,
    drop: (c) => delete c.maxDmaMaps,
  },
  {
    name: 'pgsizes',
    applies: (c) => c.pgsizes !== undefined && (c.pgsizes & DEFAULT_PGSIZES) !== 0n,
    drop: (c) => delete c.pgsizes,
  },
  {
    name: 'max_data_xfer_size',
    applies: (c) => c.maxDataXferSize !== undefined && c.maxDataXferSize >= DEFAULT_MAX_DATA_XFER_SIZE,
    drop: (c) => delete c.maxDataXferSize,
  },
  {
    name: 'max_msg_fds',
    applies: (c) => c.maxMsgFds !== undefined && c.maxMsgFds >= DEFAULT_MAX_MSG_FDS,
    drop: (c) => delete c.maxMsgFds,
  },
  { name: 'migration', applies: (c) => c.migration !== undefined, drop: (c) => delete c.migration },
  // Last resort: a max_dma_maps below the spec's default. The client then assumes 65535 and a map past our
  // limit fails with EINVAL, as with libvfio-user, which never advertises it — better than no session at all.
  { name: 'max_dma_maps (below the default)', applies: (c) => c.maxDmaMaps !== undefined, drop: (c) => delete c.maxDmaMaps },
];

/** A VERSION reply payload that fits, and the members given up for it. */
export interface FittedVersion {
  payload: Uint8Array;
  /** What the fitted capabilities still say (the caller grants only what was kept, e.g. the twin socket). */
  capabilities: Capabilities;
  /** Names of the members left out, in the order they were dropped (empty when all fit). */
  omitted: string[];
}

/**
 * Encodes the VERSION reply in at most `limit` payload bytes (the request's
 * payload size), dropping members as described above.
 * @throws {ProtocolError} E2BIG when even the smallest safe reply is longer
 *   (a client whose request is shorter than the limits we must state).
 */
export function fitVersionReply(major: number, minor: number, capabilities: Capabilities, limit: number): FittedVersion {
  const caps: Capabilities = { ...capabilities };
  if (caps.migration) caps.migration = { ...caps.migration };
  const omitted: string[] = [];
  let payload = encodeVersion({ major, minor, capabilities: caps });
  for (const omission of OMISSIONS) {
    if (payload.length <= limit) break;
    if (!omission.applies(caps)) continue;
    omission.drop(caps);
    omitted.push(omission.name);
    payload = encodeVersion({ major, minor, capabilities: caps });
  }
  if (payload.length > limit && Object.keys(caps).length === 0) payload = encodeVersion({ major, minor });
  if (payload.length > limit) {
    throw new ProtocolError(`VERSION: the reply (${payload.length} bytes) cannot fit the client's ${limit}-byte request`, { errno: Errno.E2BIG });
  }
  return { payload, capabilities: caps, omitted };
}
