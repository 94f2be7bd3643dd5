/**
 * The server side of SPARSE_MMAP_SAVING and `x-client-mmaps` (wire format in
 * src/protocol/mmap-saving.ts, docs/protocol-extensions.md §9–§10), one per
 * session of a migratable device:
 *
 * - GET_REGION_INFO adds the SPARSE_MMAP_SAVING capability of a region that
 *   declares a saving layout, only for a client that negotiated the extension;
 * - the `x-client-mmaps` feature (SET replaces the declared mappings, GET returns
 *   them) for that client;
 * - a MIG_DEVICE_STATE SET (or a deadline-bounded one) into PRE_COPY,
 *   PRE_COPY_P2P or STOP_COPY is refused EBUSY while a mapping conflicts with
 *   its region's saving layout.
 *
 * A client that did not negotiate the extension cannot declare: it is presumed
 * to map every runtime sparse area of each region whose fd it was given, so an
 * old client of a device with a saving layout fails to migrate (EBUSY) instead
 * of saving while it writes to memory behind the device's back.
 */
import { ProtocolError } from '../errors.js';
import { DeviceFeatureFlags } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import { stateName } from '../migration/state-machine.js';
import {
  CLIENT_MMAP_SIZE,
  decodeClientMmaps,
  describeMmap,
  encodeClientMmaps,
  isSavingState,
  savingConflicts,
  savingRegionCap,
  type ClientMmap,
  type SavingConflict,
} from '../protocol/mmap-saving.js';
import type { SparseMmapArea, UnknownRegionCap } from '../protocol/region.js';
import type { ReceivedFds } from '../transport/fds.js';
import type { FeatureHandler, FeatureReplyTooSmall } from './features.js';
import type { HandlerContext, RegionDescription, SessionDevice } from './types.js';

/** The saving layout of each region of `device` that has one (regions without keep their runtime layout). */
export function savingLayouts(device: SessionDevice): (region: number) => readonly SparseMmapArea[] | undefined {
  return (region) => (region < device.numRegions ? device.regionInfo(region)?.savingSparse : undefined);
}

/** One session's declared (or presumed) mappings and the rules that use them. */
export class MmapSavingSession {
  /** Whether the client negotiated `x-client-mmaps` (named it in VERSION and got the member back). */
  readonly negotiated: boolean;
  #declared: readonly ClientMmap[] = [];
  /** Regions whose fd a client that cannot declare was given. */
  readonly #presumed = new Set<number>();

  constructor(negotiated: boolean) {
    this.negotiated = negotiated;
  }

  /** The capability GET_REGION_INFO adds for a region given with its fd: a negotiating client, a region with a saving layout. */
  savingCap(desc: RegionDescription): UnknownRegionCap | undefined {
    return this.negotiated && desc.savingSparse ? savingRegionCap(desc.savingSparse, desc.size) : undefined;
  }

  /** GET_REGION_INFO gave region `index`'s fd: a client that cannot declare is presumed to map its sparse areas. */
  fdGiven(index: number): void {
    if (!this.negotiated) this.#presumed.add(index);
  }

  /** The mappings the rules use: declared, or presumed (the runtime sparse areas of every region given out). */
  mappings(device: SessionDevice): readonly ClientMmap[] {
    if (this.negotiated) return this.#declared;
    return [...this.#presumed].flatMap((region) => {
      const desc = device.regionInfo(region);
      const areas = desc?.fd === undefined ? [] : (desc.sparse ?? [{ offset: 0n, size: desc.size }]); // as GET_REGION_INFO offered them
      return areas.map((a) => ({ region, offset: a.offset, size: a.size }));
    });
  }

  /**
   * Refuses a transition into a saving state while a mapping conflicts (EBUSY, logged with the mapping).
   * @throws {ProtocolError} EBUSY.
   */
  checkTransition(ctx: HandlerContext, target: number): void {
    if (!isSavingState(target)) return;
    const conflicts = savingConflicts(this.mappings(ctx.device), savingLayouts(ctx.device));
    if (conflicts.length === 0) return;
    const what = this.negotiated ? 'declares' : 'was given the fd of (and did not negotiate x-client-mmaps), so is presumed to map,';
    const message = `MIG_DEVICE_STATE → ${stateName(target)} refused (EBUSY): the client ${what} ${describe(conflicts)} outside the region's SPARSE_MMAP_SAVING layout`;
    ctx.logger.warn({ target: stateName(target), conflicts: conflicts.map((c) => describeMmap(c.mapping)), negotiated: this.negotiated }, message);
    throw new ProtocolError(message, { errno: Errno.EBUSY });
  }

  /** The `x-client-mmaps` feature of this session (GET the declared set, SET replace it). */
  feature(): FeatureHandler {
    return {
      ops: DeviceFeatureFlags.GET | DeviceFeatureFlags.SET,
      get: (_ctx, _data, argsz): Uint8Array | FeatureReplyTooSmall => {
        const needed = 8 + CLIENT_MMAP_SIZE * this.#declared.length;
        return argsz < needed ? { needed } : encodeClientMmaps(this.#declared);
      },
      set: (ctx, data, fds) => this.#set(ctx, data, fds),
    };
  }

  /** Validates everything, then replaces the declaration. @throws {ProtocolError} EINVAL, EBUSY. */
  #set(ctx: HandlerContext, data: Uint8Array, fds: ReceivedFds): void {
    if (fds.count > 0) throw new ProtocolError(`x-client-mmaps SET: ${fds.count} fds (it takes none)`);
    const mmaps = decodeClientMmaps(data);
    for (const m of mmaps) checkMapping(ctx.device, m);
    const state = ctx.device.migration?.state;
    if (state !== undefined && isSavingState(state)) {
      const conflicts = savingConflicts(mmaps, savingLayouts(ctx.device));
      if (conflicts.length > 0) {
        const message = `x-client-mmaps SET refused (EBUSY): in ${stateName(state)} the client declares ${describe(conflicts)} outside the region's SPARSE_MMAP_SAVING layout`;
        ctx.logger.warn({ state: stateName(state), conflicts: conflicts.map((c) => describeMmap(c.mapping)) }, message);
        throw new ProtocolError(message, { errno: Errno.EBUSY });
      }
    }
    this.#declared = mmaps;
  }
}

/** A declared mapping must be of a region the server offers for mmap, and inside it. @throws {ProtocolError} EINVAL. */
function checkMapping(device: SessionDevice, m: ClientMmap): void {
  const desc = m.region < device.numRegions ? device.regionInfo(m.region) : undefined;
  if (!desc || desc.fd === undefined) throw new ProtocolError(`x-client-mmaps SET: ${describeMmap(m)}: the region cannot be mmapped`);
  if (m.offset + m.size > desc.size) throw new ProtocolError(`x-client-mmaps SET: ${describeMmap(m)} ends past the region (0x${desc.size.toString(16)} bytes)`);
}

function describe(conflicts: readonly SavingConflict[]): string {
  const first = conflicts.slice(0, 4).map((c) => `mapping ${describeMmap(c.mapping)}`);
  return first.join(', ') + (conflicts.length > 4 ? ` and ${conflicts.length - 4} more` : '');
}
