/**
 * The client side of SPARSE_MMAP_SAVING and `x-client-mmaps` (docs/protocol-extensions.md §9–§10).
 *
 * A server cannot see this process's mmaps, so when it offers `x-client-mmaps` the client declares the areas
 * it maps of every region that carries a saving layout (regions without one never conflict, so they are not
 * declared: no extra message for them). Before a transition into PRE_COPY, PRE_COPY_P2P or STOP_COPY
 * ({@link prepareForSaving}) every such region is switched to its saving layout: the areas outside it are
 * unmapped and their accesses go through REGION_READ/REGION_WRITE (the device sees each one), the parts that
 * stay valid are mapped again; then the smaller set is declared and the server lets the transition happen.
 * Back in RUNNING ({@link restoreAfterSaving}) the grown set is declared first, then mapped.
 *
 * Invariant: the server is never told less than what is mapped: a set grows by declaring before mapping, and
 * shrinks by unmapping before declaring. Declarations are serialised per client.
 * `VfioUserClient.setMigrationState()` and `.setMigrationStateWithDeadline()` call these around the SET, so an
 * orchestrator needs nothing more.
 */
import { DeviceFeatureFlags, MigrationState } from '../protocol/constants.js';
import { clientMmapsFeatureOf, encodeClientMmaps, isSavingState, type ClientMmap } from '../protocol/mmap-saving.js';
import type { SparseMmapArea } from '../protocol/region.js';
import { getDefaultLogger, type Logger } from '../log.js';
import type { VfioUserClient } from './client.js';

/** What a region that takes part needs to offer the tracker (MappedRegion, regions.ts). */
export interface SavingParticipant {
  readonly index: number;
  /** The region's saving layout (undefined: none, the region does not take part). */
  readonly savingLayout: readonly SparseMmapArea[] | undefined;
  /** The areas mapped now. */
  mappedAreas(): readonly SparseMmapArea[];
  /** The areas it would map in the runtime (`saving` false) or saving layout. */
  targetAreas(saving: boolean): readonly SparseMmapArea[];
  /** Maps/unmaps so that exactly the target areas of that layout are mapped (those that can be). */
  remap(saving: boolean): void;
}

/** What {@link prepareForSaving} did. */
export interface SavingPreparation {
  /** Mappings moved to the message path (unmapped). */
  moved: ClientMmap[];
  /** Mappings declared to the server afterwards. */
  declared: ClientMmap[];
}

const key = (m: ClientMmap): string => `${m.region}:${m.offset}:${m.size}`;

/** One client's declared mappings and its saving state ({@link mmapSavingOf}). */
export class MmapSavingTracker {
  readonly #client: VfioUserClient;
  readonly #logger: Logger;
  readonly #regions = new Set<SavingParticipant>();
  /** Whether the regions are in their saving layout. */
  saving = false;
  /** What the server was last told (a session starts with none declared). */
  #declared: readonly ClientMmap[] = [];
  #queue: Promise<unknown> = Promise.resolve();

  constructor(client: VfioUserClient, logger: Logger) {
    this.#client = client;
    this.#logger = logger;
  }

  /** The feature index the server advertised, or undefined (the extension is then not used at all). */
  get feature(): number | undefined {
    return clientMmapsFeatureOf(this.#client.serverAdvertised);
  }

  get declared(): readonly ClientMmap[] {
    return this.#declared;
  }

  /** Runs `work` after every earlier declaration step of this client. */
  serial<T>(work: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(work, work);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /** The mappings of every participating region, plus `extra`. */
  current(extra: readonly ClientMmap[] = []): ClientMmap[] {
    const out = [...this.#regions].flatMap((r) => r.mappedAreas().map((a) => ({ region: r.index, offset: a.offset, size: a.size })));
    return dedupe([...out, ...extra]);
  }

  /** Declares `mmaps` unless the server already has exactly that set. @throws {RemoteError} the server's errno (EINVAL, EBUSY). */
  async declare(mmaps: readonly ClientMmap[]): Promise<void> {
    const feature = this.feature;
    if (feature === undefined) return;
    const sorted = [...mmaps].sort(compare);
    if (sameSet(sorted, this.#declared)) return;
    const data = encodeClientMmaps(sorted);
    await this.#client.deviceFeature(feature | DeviceFeatureFlags.SET, data, 8 + data.length);
    this.#declared = sorted;
  }

  /** A region that maps areas of a region with a saving layout joins; `targets` are declared before it maps them. */
  async admit(region: SavingParticipant, targets: readonly SparseMmapArea[]): Promise<void> {
    await this.serial(async () => {
      await this.declare(this.current(targets.map((a) => ({ region: region.index, offset: a.offset, size: a.size }))));
      this.#regions.add(region);
    });
  }

  /** A region that mapped nothing after all, or closed: the server learns at the next declaration. */
  leave(region: SavingParticipant): void {
    this.#regions.delete(region);
  }

  /** Switches every region to its saving layout, then declares what is left. */
  async prepare(): Promise<SavingPreparation> {
    return this.serial(async () => {
      const before = this.current();
      const grow = [...this.#regions].flatMap((r) => r.targetAreas(true).map((a) => ({ region: r.index, offset: a.offset, size: a.size })));
      // Parts that stay valid but are not mapped yet as such are declared first (declare, then map).
      if (grow.some((m) => !covered(m, before))) await this.declare(dedupe([...before, ...grow]));
      this.saving = true;
      for (const r of this.#regions) r.remap(true);
      const after = this.current();
      await this.declare(after);
      const moved = before.filter((b) => !after.some((a) => key(a) === key(b)));
      if (moved.length > 0) this.#logger.info({ moved: moved.map(key) }, 'mappings moved to the message path for saving (SPARSE_MMAP_SAVING)');
      return { moved, declared: after };
    });
  }

  /** Declares the runtime layout, then maps it again. */
  async restore(): Promise<void> {
    await this.serial(async () => {
      if (!this.saving) return;
      const grow = [...this.#regions].flatMap((r) => r.targetAreas(false).map((a) => ({ region: r.index, offset: a.offset, size: a.size })));
      const now = this.current();
      if (grow.some((m) => !covered(m, now))) await this.declare(dedupe([...now, ...grow]));
      this.saving = false;
      for (const r of this.#regions) r.remap(false);
      await this.declare(this.current());
    });
  }
}

const trackers = new WeakMap<VfioUserClient, MmapSavingTracker>();

/** The client's tracker (created on first use). */
export function mmapSavingOf(client: VfioUserClient, logger: Logger = getDefaultLogger()): MmapSavingTracker {
  let t = trackers.get(client);
  if (!t) trackers.set(client, (t = new MmapSavingTracker(client, logger)));
  return t;
}

/**
 * Switches every mapped region of `client` that has a saving layout to it (areas outside are unmapped: their
 * accesses become messages) and declares the remaining mappings. Idempotent; nothing is sent when nothing changes
 * or the server did not offer `x-client-mmaps`.
 * @throws {RemoteError} the server's errno for the declaration (EINVAL).
 */
export function prepareForSaving(client: VfioUserClient): Promise<SavingPreparation> {
  return mmapSavingOf(client).prepare();
}

/** Declares the runtime layout again, then maps it (after {@link prepareForSaving}; else nothing). @throws {RemoteError} the server's errno (EINVAL). */
export function restoreAfterSaving(client: VfioUserClient): Promise<void> {
  return mmapSavingOf(client).restore();
}

/** The mappings the server was last told about (empty when the extension is not offered). */
export function declaredMmaps(client: VfioUserClient): readonly ClientMmap[] {
  return mmapSavingOf(client).declared;
}

/**
 * Runs a migration-state SET (`run`, resolving with the state reached) with the saving layout honoured: prepared
 * before a saving target, restored once RUNNING is reached — or when the SET into a saving state failed and the
 * device is still RUNNING.
 * @throws whatever `run` or the declarations throw.
 */
export async function savingTransition<T>(client: VfioUserClient, logger: Logger, target: number, run: () => Promise<T>, reached: (r: T) => number): Promise<T> {
  const t = mmapSavingOf(client, logger);
  if (t.feature === undefined) return run();
  if (isSavingState(target)) await t.prepare();
  let result: T;
  try {
    result = await run();
  } catch (error) {
    if (isSavingState(target) && t.saving) await restoreIfRunning(client, t, logger);
    throw error;
  }
  if (reached(result) === MigrationState.RUNNING) await t.restore();
  return result;
}

async function restoreIfRunning(client: VfioUserClient, t: MmapSavingTracker, logger: Logger): Promise<void> {
  try {
    if ((await client.migrationState()) === MigrationState.RUNNING) await t.restore();
  } catch (err) {
    logger.warn({ err }, 'could not restore the runtime mmap layout after a refused saving transition');
  }
}

/** Whether `m` lies inside one of `mmaps` (the server already believes it mapped). */
function covered(m: ClientMmap, mmaps: readonly ClientMmap[]): boolean {
  return mmaps.some((b) => b.region === m.region && b.offset <= m.offset && m.offset + m.size <= b.offset + b.size);
}

function compare(a: ClientMmap, b: ClientMmap): number {
  if (a.region !== b.region) return a.region - b.region;
  if (a.offset !== b.offset) return a.offset < b.offset ? -1 : 1;
  return a.size < b.size ? -1 : a.size > b.size ? 1 : 0;
}

function dedupe(mmaps: readonly ClientMmap[]): ClientMmap[] {
  const seen = new Map(mmaps.map((m) => [key(m), m]));
  return [...seen.values()].sort(compare);
}

function sameSet(a: readonly ClientMmap[], b: readonly ClientMmap[]): boolean {
  return a.length === b.length && a.every((m, i) => key(m) === key(b[i] as ClientMmap));
}

/** The parts of `runtime` areas that lie inside `layout` areas (sorted). */
export function intersectLayout(runtime: readonly SparseMmapArea[], layout: readonly SparseMmapArea[]): SparseMmapArea[] {
  const out: SparseMmapArea[] = [];
  for (const r of runtime) {
    for (const l of layout) {
      const start = r.offset > l.offset ? r.offset : l.offset;
      const end = r.offset + r.size < l.offset + l.size ? r.offset + r.size : l.offset + l.size;
      if (end > start) out.push({ offset: start, size: end - start });
    }
  }
  return out.sort((a, b) => (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0));
}
