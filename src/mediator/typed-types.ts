/**
 * The typed interposition API's vocabulary: one decoded event and one
 * decision type per kind of message a plugin may want to see
 * (docs/mediation-plugins.md). {@link definePlugin} (typed.ts) turns a
 * {@link TypedPluginSpec} into the generic {@link MediatorPlugin} of types.ts.
 *
 * Every decision may be `undefined` (forward the message as received), or one
 * of the {@link CommonDecision}s. A hook that throws (or rejects) becomes an
 * error reply carrying the error's errno (EIO when it has none): the typed
 * layer never catches a hook's error.
 */
import type { RegionInfo } from '../protocol/region.js';
import type { MaybePromise, MediatorSessionContext } from './types.js';

/** Decisions every hook may return besides its own. */
export type CommonDecision =
  /** Answer with an error reply carrying this errno (Linux numbering, `Errno`). */
  | { error: number }
  /** Swallow the message: nobody answers (the sender's own timeout applies). */
  | { drop: true }
  /** Close the session, both sides. */
  | { disconnect: true };

/** A hook: synchronous results keep the mediator's fast path (no await per message). */
export type Hook<E, D> = (event: E, ctx: MediatorSessionContext) => MaybePromise<D>;

// ----------------------------------------------------------------- regions

/** A client's DEVICE_GET_REGION_INFO, answered by the upstream: the decoded reply (full capability chain) and its fd. */
export interface RegionInfoEvent {
  readonly index: number;
  /** The upstream's answer, with every capability (the typed layer asks with a large enough argsz). */
  readonly info: RegionInfo;
  /** The region's fd for mmap, if the upstream sent one (borrowed: the typed layer closes it). */
  readonly fd: number | undefined;
  /** The client's argsz: a rewritten reply longer than this is sent as the "argsz needed" short form. */
  readonly clientArgsz: number;
}

/**
 * What to tell the client about a region. `info` replaces the reply (its
 * `argsz`, `capOffset` and the CAPS flag are recomputed from `caps`); `fd`
 * replaces the fd (`null`: send none, so the client cannot mmap; the fd is
 * borrowed, the typed layer dups it).
 */
export type RegionInfoDecision = undefined | { reply: { info?: RegionInfo; fd?: number | null } } | CommonDecision;

/** A REGION_READ or REGION_WRITE as the client sent it. */
export interface RegionAccessEvent {
  readonly region: number;
  readonly offset: bigint;
  readonly count: number;
}

/** A REGION_WRITE (or one write of a REGION_WRITE_MULTI): the access and its bytes. */
export interface RegionWriteEvent extends RegionAccessEvent {
  readonly data: Uint8Array;
  /** True when the write is one entry of a REGION_WRITE_MULTI. */
  readonly multi: boolean;
}

/** A REGION_READ's decision: forward it, or emulate it (`reply`: exactly `count` bytes). */
export type RegionReadDecision = undefined | { reply: Uint8Array } | CommonDecision;

/** The upstream's REGION_READ reply, before the client sees it. */
export interface RegionReadReplyEvent extends RegionAccessEvent {
  readonly data: Uint8Array;
}

/** Replace the data the client reads (`reply`: exactly `count` bytes). */
export type RegionReadReplyDecision = undefined | { reply: Uint8Array } | CommonDecision;

/**
 * A REGION_WRITE's decision: forward it, forward other bytes (`forward.data`,
 * same length), or emulate it (`reply: true`: the client gets the usual
 * acknowledgement and the upstream never sees the write).
 */
export type RegionWriteDecision = undefined | { forward: { data: Uint8Array } } | { reply: true } | CommonDecision;

/** A REGION_WRITE_MULTI: its writes (each ≤ 8 bytes). */
export interface RegionWriteMultiEvent {
  readonly writes: readonly RegionWriteEvent[];
}

/**
 * A REGION_WRITE_MULTI's decision: forward, forward other writes, or answer
 * (`reply.wrCnt`, default the number of writes).
 */
export type RegionWriteMultiDecision =
  | undefined
  | { forward: { writes: ReadonlyArray<{ region: number; offset: bigint; data: Uint8Array }> } }
  | { reply: { wrCnt?: bigint } }
  | CommonDecision;

// ---------------------------------------------------------------- interrupts

/** DEVICE_SET_IRQS, decoded. */
export interface SetIrqsEvent {
  readonly index: number;
  readonly start: number;
  readonly count: number;
  /** The raw flags word. */
  readonly flags: number;
  readonly action: 'mask' | 'unmask' | 'trigger' | 'invalid';
  readonly dataType: 'none' | 'bool' | 'eventfd' | 'invalid';
  /** DATA_BOOL: one byte per vector. */
  readonly bools: Uint8Array | undefined;
  /** The eventfds sent with it (DATA_EVENTFD; borrowed). */
  readonly fds: readonly number[];
}

/** Forward, forward with other eventfds (borrowed; dup'd by the mediator), or answer here. */
export type SetIrqsDecision = undefined | { forward: { fds: readonly number[] } } | { reply: true } | CommonDecision;

/** One signal of an interposed interrupt (see `interposeInterrupts`). */
export interface InterruptSignal {
  readonly index: number;
  /** Vector number (start + position in the SET_IRQS). */
  readonly vector: number;
  /** The eventfd counter read (signals coalesced since the last read). */
  readonly count: bigint;
}

// ----------------------------------------------------------------------- DMA

/** A client's DMA_MAP, decoded. */
export interface DmaMapEvent {
  readonly addr: bigint;
  readonly size: bigint;
  readonly offset: bigint;
  /** DmaMapFlags bits, raw. */
  readonly flags: number;
  /** The memory's fd, when the client sent one (borrowed). */
  readonly fd: number | undefined;
}

/**
 * A DMA_MAP's decision: forward; forward changed (`fd: null` strips the fd, so
 * the upstream's DMA to it arrives as DMA_READ/DMA_WRITE messages through the
 * mediator; a number replaces it, borrowed); or answer (`reply: true`: the
 * upstream never sees it). Refuse with `{ error: Errno.EPERM }`.
 */
export type DmaMapDecision =
  | undefined
  | { forward: { fd?: number | null; flags?: number; offset?: bigint } }
  | { reply: true }
  | CommonDecision;

/** A client's DMA_UNMAP, decoded. */
export interface DmaUnmapEvent {
  readonly addr: bigint;
  readonly size: bigint;
  /** Raw flags (DmaUnmapFlags). */
  readonly flags: number;
  readonly all: boolean;
  /** Present when the client asked for the dirty bitmap. */
  readonly bitmap: { pgsize: bigint; size: bigint } | undefined;
}

/** Forward, or answer here (`reply.bitmap`: `bitmap.size` bytes, required when one was asked for). */
export type DmaUnmapDecision = undefined | { reply: { bitmap?: Uint8Array } } | CommonDecision;

/** A DMA_READ the upstream sends (towards the client's memory). */
export interface DmaReadEvent {
  readonly addr: bigint;
  readonly count: bigint;
}

/** Forward to the client, or answer with `count` bytes. */
export type DmaReadDecision = undefined | { reply: Uint8Array } | CommonDecision;

/** A DMA_WRITE the upstream sends. */
export interface DmaWriteEvent {
  readonly addr: bigint;
  readonly data: Uint8Array;
}

/** Forward, forward other bytes (same length), or acknowledge here (`reply: true`). */
export type DmaWriteDecision = undefined | { forward: { data: Uint8Array } } | { reply: true } | CommonDecision;

// ---------------------------------------------------------- device features

/** A DEVICE_FEATURE, decoded. */
export interface FeatureEvent {
  /** Feature index (flags bits 0–15), e.g. `DeviceFeature.MIGRATION`. */
  readonly feature: number;
  /** `probe` when PROBE is set, else `get` or `set` (`invalid`: neither or both). */
  readonly op: 'get' | 'set' | 'probe' | 'invalid';
  /** With PROBE: which operations are asked about. */
  readonly probe: { get: boolean; set: boolean };
  readonly flags: number;
  readonly argsz: number;
  readonly data: Uint8Array;
}

/**
 * A DEVICE_FEATURE's decision: forward (optionally with other `data`), or
 * answer here. `reply` is the GET's data, or `true` for a SET or PROBE
 * (the request echoed, as servers do). A GET reply longer than the client's
 * argsz becomes EINVAL, as our server answers.
 */
export type FeatureDecision = undefined | { forward: { data: Uint8Array } } | { reply: Uint8Array | true } | CommonDecision;

/** The upstream's answer to a forwarded DEVICE_FEATURE. */
export interface FeatureReplyEvent extends FeatureEvent {
  /** The reply's data (GET), or undefined when the upstream answered with an error. */
  readonly replyData: Uint8Array | undefined;
  /** The upstream's errno, 0 on success. */
  readonly errno: number;
}

/** Keep the upstream's answer, or replace it (data for a GET, `true` for SET/PROBE success) or turn it into an error. */
export type FeatureReplyDecision = undefined | { reply: Uint8Array | true } | { error: number };

// ---------------------------------------------------------------- migration

/** MIG_DEVICE_STATE (DEVICE_FEATURE 2) GET or SET. */
export type MigStateEvent = { readonly op: 'get' } | { readonly op: 'set'; readonly state: number };

/** Forward, or answer: `reply.state` for a GET (a SET is echoed). */
export type MigStateDecision = undefined | { reply: { state?: number } } | CommonDecision;

/** MIG_DATA_READ: the client wants up to `size` bytes. */
export interface MigDataReadEvent {
  readonly size: number;
  readonly argsz: number;
}

/** Forward, or answer with at most `size` bytes (fewer: no more data now). */
export type MigDataReadDecision = undefined | { reply: Uint8Array } | CommonDecision;

/** MIG_DATA_WRITE: the client sends `data`. */
export interface MigDataWriteEvent {
  readonly data: Uint8Array;
}

/** Forward, forward other bytes, or acknowledge here. */
export type MigDataWriteDecision = undefined | { forward: { data: Uint8Array } } | { reply: true } | CommonDecision;

// -------------------------------------------------------------------- spec

/** A typed plugin: every hook optional; a command with no hook is forwarded without being decoded. */
export interface TypedPluginSpec {
  readonly name: string;
  onSessionStart?(ctx: MediatorSessionContext): MaybePromise<void>;
  /** Must not throw (logged). The typed layer's own resources (interposed interrupts) are released before it runs. */
  onSessionEnd?(ctx: MediatorSessionContext, reason: string): void;
  /** DEVICE_GET_REGION_INFO's answer (asynchronous by nature: the typed layer asks the upstream itself). */
  regionInfo?: Hook<RegionInfoEvent, RegionInfoDecision>;
  regionRead?: Hook<RegionAccessEvent, RegionReadDecision>;
  regionReadReply?: Hook<RegionReadReplyEvent, RegionReadReplyDecision>;
  /** REGION_WRITE, and each write of a REGION_WRITE_MULTI when there is no {@link regionWriteMulti} hook. */
  regionWrite?: Hook<RegionWriteEvent, RegionWriteDecision>;
  regionWriteMulti?: Hook<RegionWriteMultiEvent, RegionWriteMultiDecision>;
  setIrqs?: Hook<SetIrqsEvent, SetIrqsDecision>;
  dmaMap?: Hook<DmaMapEvent, DmaMapDecision>;
  dmaUnmap?: Hook<DmaUnmapEvent, DmaUnmapDecision>;
  /** Every DEVICE_FEATURE (after {@link migState} for MIG_DEVICE_STATE, when that hook forwarded). */
  feature?: Hook<FeatureEvent, FeatureDecision>;
  featureReply?: Hook<FeatureReplyEvent, FeatureReplyDecision>;
  migState?: Hook<MigStateEvent, MigStateDecision>;
  migDataRead?: Hook<MigDataReadEvent, MigDataReadDecision>;
  migDataWrite?: Hook<MigDataWriteEvent, MigDataWriteDecision>;
  /** The upstream's DMA_READ (towards the client). */
  dmaRead?: Hook<DmaReadEvent, DmaReadDecision>;
  /** The upstream's DMA_WRITE (towards the client). */
  dmaWrite?: Hook<DmaWriteEvent, DmaWriteDecision>;
}
