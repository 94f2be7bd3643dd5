/**
 * `createMigrationPlugin`: makes a device with no migration support
 * migratable behind a mediator (docs/mediated-migration.md). The hooks:
 *
 * - client commands: the migration features and data commands are answered
 *   here (features.ts); DMA_MAP / DMA_UNMAP are mirrored and sent upstream by
 *   the plugin (with or without the fd, see dma-steering.ts); REGION_READ /
 *   REGION_WRITE to a trapped area while saving are reported to the spec's
 *   callback, then forwarded;
 * - upstream replies: VERSION gains `x-client-mmaps` (for a client that asked),
 *   GET_REGION_INFO of an mmappable region gains the SPARSE_MMAP_SAVING layout
 *   (for such a client), DEVICE_RESET resets the migration state;
 * - upstream commands: DMA_READ / DMA_WRITE into memory the client mapped with
 *   an fd are applied here (the steered DMA, pages marked dirty while logging).
 */
import { CAP_HEADER_SIZE, Command, DmaUnmapFlags, MigrationState, RegionIndex, RegionInfoFlags, REGION_INFO_SIZE } from '../../protocol/constants.js';
import { decodeDmaMapRequest, decodeDmaReadRequest, decodeDmaUnmapRequest, decodeDmaWriteRequest, encodeDmaAccess, encodeDmaAccessWithData, encodeDmaUnmapReply } from '../../protocol/dma.js';
import { isError } from '../../protocol/header.js';
import { clientMmapsMember, clientMmapsRequested, savingRegionCap, SPARSE_MMAP_SAVING_CAP_ID } from '../../protocol/mmap-saving.js';
import { decodeRegionInfo, encodeRegionInfo } from '../../protocol/region.js';
import { decodeRegionReadRequest, decodeRegionWriteRequest } from '../../protocol/region-access.js';
import { decodeVersion, encodeVersion } from '../../protocol/version.js';
import type { MediatedMessage, MediatorPlugin, MediatorSessionContext, Verdict } from '../types.js';
import { answerFeature, answerMigDataRead, answerMigDataWrite, errnoOf, ownsFeature } from './features.js';
import { migrationExtensionMembers } from '../../protocol/migration-extensions.js';
import { MediatedSession } from './session.js';
import { normalizeSpec, type MediatedMigrationSpec } from './spec.js';
import type { SteeringStats } from './dma-steering.js';

/** What a session of the plugin did so far (tests, logs). */
export interface MigrationSessionStats extends SteeringStats {
  id: number;
  state: number;
  trappedAccesses: number;
  declaredMmaps: number;
}

/** The plugin, with a view of its live sessions. */
export interface MigrationPlugin extends MediatorPlugin {
  /** Every live session's counters. */
  stats(): MigrationSessionStats[];
}

const MIGRATION_PGSIZE = 4096;

/**
 * A plugin that makes the upstream migratable (module TSDoc).
 * @throws {InvalidArgumentError} EINVAL for a bad spec (spec.ts).
 */
export function createMigrationPlugin(spec: MediatedMigrationSpec): MigrationPlugin {
  const normalized = normalizeSpec(spec);
  const key = Symbol('mediated-migration');
  const live = new Map<number, MediatedSession>();
  const sessionOf = (ctx: MediatorSessionContext): MediatedSession => {
    let s = ctx.state.get(key) as MediatedSession | undefined;
    if (!s) {
      s = new MediatedSession(normalized, ctx);
      ctx.state.set(key, s);
      live.set(ctx.id, s);
    }
    return s;
  };
  return {
    name: 'mediated-migration',
    onClientCommand: (msg, ctx) => clientCommand(sessionOf(ctx), msg),
    onUpstreamReply: (reply, request, ctx) => upstreamReply(sessionOf(ctx), reply, request),
    onUpstreamCommand: (msg, ctx) => upstreamCommand(sessionOf(ctx), msg),
    onSessionEnd(ctx) {
      const s = ctx.state.get(key) as MediatedSession | undefined;
      live.delete(ctx.id);
      s?.close();
    },
    stats: () =>
      [...live.entries()].map(([id, s]) => ({
        id,
        state: s.state,
        ...s.steering.stats,
        trappedAccesses: s.trappedAccesses,
        declaredMmaps: s.declared.length,
      })),
  };
}

const reply = (payload?: Uint8Array): Verdict => ({ reply: payload === undefined ? {} : { payload } });

function clientCommand(s: MediatedSession, msg: MediatedMessage): Verdict | Promise<Verdict> {
  switch (msg.header.cmd) {
    case Command.VERSION:
      noteClientVersion(s, msg.payload);
      return undefined;
    case Command.DEVICE_FEATURE:
      return ownsFeature(msg.payload) ? answerFeature(s, msg.payload).then(reply) : undefined;
    case Command.MIG_DATA_READ:
      return answerMigDataRead(s, msg.payload).then(reply);
    case Command.MIG_DATA_WRITE:
      return answerMigDataWrite(s, msg.payload).then(() => reply());
    case Command.DMA_MAP:
      return s.steering.map(s.port, decodeDmaMapRequest(msg.payload), msg.fds[0]).then(() => reply());
    case Command.DMA_UNMAP:
      return dmaUnmap(s, msg.payload);
    case Command.REGION_READ:
    case Command.REGION_WRITE:
      observeAccess(s, msg);
      return undefined;
    default:
      return undefined;
  }
}

/** Whether the client's VERSION asks for x-client-mmaps (a malformed one is the upstream's to refuse). */
function noteClientVersion(s: MediatedSession, payload: Uint8Array): void {
  try {
    const extra = decodeVersion(payload).capabilities?.migration?.extra;
    s.clientAsked = clientMmapsRequested(extra);
    s.clientExtensions = migrationExtensionMembers(extra);
  } catch {
    s.clientAsked = false;
  }
}

/** A client access to a trapped area while saving: counted and reported, then forwarded. */
function observeAccess(s: MediatedSession, msg: MediatedMessage): void {
  if (s.mmappable.size === 0 || s.state === MigrationState.RUNNING) return;
  const write = msg.header.cmd === Command.REGION_WRITE;
  let access;
  try {
    access = write ? decodeRegionWriteRequest(msg.payload) : decodeRegionReadRequest(msg.payload);
  } catch {
    return; // the upstream refuses it
  }
  if (!s.trapped(access.region, access.offset, access.count)) return;
  s.trappedAccesses++;
  const data = 'data' in access ? (access.data as Uint8Array).slice() : undefined;
  try {
    s.spec.onTrappedAccess?.({ region: access.region, offset: access.offset, count: access.count, write, ...(data ? { data } : {}) }, s.ctx.id);
  } catch (err) {
    s.ctx.log.warn({ err }, 'onTrappedAccess threw (ignored)');
  }
}

async function dmaUnmap(s: MediatedSession, payload: Uint8Array): Promise<Verdict> {
  const req = decodeDmaUnmapRequest(payload);
  if ((req.flags & DmaUnmapFlags.ALL) !== 0) {
    await s.port.raw(Command.DMA_UNMAP, payload);
    s.steering.forgetAll();
    return reply();
  }
  if ((req.flags & DmaUnmapFlags.GET_DIRTY_BITMAP) !== 0 && req.bitmap) {
    // The upstream has no bitmap of a steered region: the mirror has it.
    s.steering.checkUnmapBitmap(req.addr, req.size, req.bitmap.pgsize);
    await s.port.dmaUnmap(req.addr, req.size);
    const bitmap = s.steering.forgetWithBitmap(req.addr, req.size, req.bitmap.pgsize);
    return reply(encodeDmaUnmapReply({ argsz: req.argsz, flags: req.flags, addr: req.addr, size: req.size, bitmap: { pgsize: req.bitmap.pgsize, size: BigInt(bitmap.length), data: bitmap } }));
  }
  await s.port.raw(Command.DMA_UNMAP, payload);
  s.steering.forget(req.addr, req.size);
  return reply();
}

function upstreamReply(s: MediatedSession, msg: MediatedMessage, request: MediatedMessage): Verdict {
  if (isError(msg.header)) return undefined;
  switch (request.header.cmd) {
    case Command.VERSION:
      return versionReply(s, msg);
    case Command.DEVICE_GET_REGION_INFO:
      return regionInfoReply(s, msg, request);
    case Command.DEVICE_RESET:
      s.reset();
      return undefined;
    default:
      return undefined;
  }
}

/**
 * VERSION: `migration` with the extensions the client asked for (x-client-mmaps, this library's migration
 * extensions); the upstream's own migration members are dropped (the plugin answers migration). A client that
 * asked for nothing (QEMU) gets the upstream's reply as it was, unless the upstream offered migration itself.
 */
function versionReply(s: MediatedSession, msg: MediatedMessage): Verdict {
  let version;
  try {
    version = decodeVersion(msg.payload);
  } catch {
    return undefined;
  }
  const extra = { ...s.clientExtensions, ...(s.clientAsked ? clientMmapsMember() : {}) };
  const caps = version.capabilities;
  if (!caps || (Object.keys(extra).length === 0 && caps.migration === undefined)) return undefined;
  caps.migration = { pgsize: MIGRATION_PGSIZE, ...(Object.keys(extra).length > 0 ? { extra } : {}) };
  return { forward: { payload: encodeVersion(version) } };
}

/** GET_REGION_INFO of an mmappable BAR: noted as trappable; the saving layout added for a client that asked. */
function regionInfoReply(s: MediatedSession, msg: MediatedMessage, request: MediatedMessage): Verdict {
  let info;
  try {
    info = decodeRegionInfo(msg.payload);
  } catch {
    return undefined;
  }
  if ((info.flags & RegionInfoFlags.MMAP) === 0 || info.index === RegionIndex.CONFIG) return undefined;
  s.mmappable.add(info.index);
  if (!s.clientAsked || info.caps.some((c) => c.kind === 'unknown' && c.id === SPARSE_MMAP_SAVING_CAP_ID)) return undefined;
  const cap = savingRegionCap([...(s.savingLayout(info.index) ?? [])], info.size);
  const capSize = CAP_HEADER_SIZE + cap.data.length;
  const asked = request.payload.length >= 4 ? new DataView(request.payload.buffer, request.payload.byteOffset).getUint32(0, true) : REGION_INFO_SIZE;
  const flags = info.flags | RegionInfoFlags.CAPS;
  const head = (argsz: number): Verdict => ({ forward: { payload: encodeRegionInfo({ ...info, flags, caps: [], capOffset: 0, argsz }) } });
  // The upstream's own chain did not fit the client's argsz: it asks again with the size needed, ours included.
  if (info.argsz > msg.payload.length) return head(info.argsz + capSize);
  const full = encodeRegionInfo({ ...info, flags, caps: [...info.caps, cap], argsz: 0 });
  if (full.length > asked) return head(full.length);
  new DataView(full.buffer, full.byteOffset).setUint32(0, full.length, true);
  return { forward: { payload: full } };
}

function upstreamCommand(s: MediatedSession, msg: MediatedMessage): Verdict {
  try {
    if (msg.header.cmd === Command.DMA_WRITE) {
      const w = decodeDmaWriteRequest(msg.payload);
      return s.steering.write(w.addr, w.data) ? reply(encodeDmaAccess({ addr: w.addr, count: w.count })) : undefined;
    }
    if (msg.header.cmd === Command.DMA_READ) {
      const r = decodeDmaReadRequest(msg.payload);
      const data = s.steering.read(r.addr, Number(r.count));
      return data === undefined ? undefined : reply(encodeDmaAccessWithData({ addr: r.addr, count: r.count, data }));
    }
  } catch (error) {
    return { error: errnoOf(error) };
  }
  return undefined;
}

