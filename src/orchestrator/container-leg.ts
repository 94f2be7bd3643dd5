/**
 * One device of a migration (a "leg": its source session and its
 * destination device), as the orchestrator drives it: its migration states
 * on both sides, its timed state changes, its device data and meter, and how
 * its source was recovered. A one-device migration has one leg; a container
 * has one per device, which change state together ({@link together}).
 */
import type { VfioUserClient } from '../client/client.js';
import { MigrationState as S } from '../protocol/constants.js';
import { stateName } from '../migration/state-machine.js';
import type { DeviceDestination } from './destination.js';
import type { ProjectedDevice } from './projector.js';
import { Meter } from './transfer.js';
import type { ArcTiming, DeviceMigrationReport, StateTiming } from './types.js';

const now = (): number => performance.now();

/** Awaits a state change under the migration's limits, or not (after the abort or the commit). */
export type Await = <T>(work: Promise<T>) => Promise<T>;

/** Whether `state` is one of the P2P states (the device runs but initiates no DMA). */
export const isP2pState = (state: number): boolean => state === S.RUNNING_P2P || state === S.PRE_COPY_P2P;

/** One device of a migration. */
export class Leg implements ProjectedDevice {
  readonly name: string;
  readonly src: VfioUserClient;
  readonly dst: DeviceDestination;
  readonly preCopy: boolean;
  readonly p2p: boolean;
  devMeter = new Meter(Number.POSITIVE_INFINITY);
  srcState: number = S.RUNNING;
  /** Undefined until the destination's state was first read (nothing to abandon before). */
  dstState: number | undefined;
  readonly bytes = { precopy: 0n, stopCopy: 0n };
  readonly arcs: ArcTiming[] = [];
  readonly states: StateTiming[] = [{ side: 'source', state: 'RUNNING', atMs: 0 }];
  /** Time spent in its P2P arcs (ms). */
  p2pMs = 0;
  sourceRecovery: DeviceMigrationReport['sourceRecovery'];
  readonly #started: number;
  readonly #log: { log: ArcTiming[]; tag: boolean };

  /** `log.log` also gets every arc (with the device's name when `log.tag`). */
  constructor(name: string, src: VfioUserClient, dst: DeviceDestination, flags: { preCopy: boolean; p2p: boolean }, started: number, log: { log: ArcTiming[]; tag: boolean }) {
    this.name = name;
    this.src = src;
    this.dst = dst;
    this.preCopy = flags.preCopy;
    this.p2p = flags.p2p;
    this.#started = started;
    this.#log = log;
  }

  /** The state of a side, by name (as last set or read). */
  stateName(side: 'source' | 'destination'): string {
    return stateName(side === 'source' ? this.srcState : (this.dstState ?? S.RUNNING));
  }

  /** A timed SET on one side, awaited with `wait`. */
  async set(side: 'source' | 'destination', to: number, wait: Await): Promise<void> {
    const from = side === 'source' ? this.srcState : (this.dstState ?? S.RUNNING);
    const t = now();
    await wait(side === 'source' ? this.src.setMigrationState(to) : this.dst.setMigrationState(to));
    this.arc(side, from, to, now() - t);
  }

  /** Records a state change this leg made (`from` → `to` in `ms`). */
  arc(side: 'source' | 'destination', from: number, to: number, ms: number): void {
    const arc: ArcTiming = { side, from: stateName(from), to: stateName(to), ms };
    this.arcs.push(arc);
    this.#log.log.push(this.#log.tag ? { side, device: this.name, from: arc.from, to: arc.to, ms } : arc);
    this.states.push({ side, state: stateName(to), atMs: now() - this.#started });
    if (isP2pState(to)) this.p2pMs += ms;
    if (side === 'source') this.srcState = to;
    else this.dstState = to;
  }

  /**
   * The source back to RUNNING or, with `p2pFirst`, a stopped source only to
   * RUNNING_P2P (the container's mirror order; a running one is left as it
   * is) — or, when that fails, a DEVICE_RESET. Records {@link sourceRecovery}; never throws.
   */
  async recoverSource(p2pFirst = false): Promise<void> {
    if (this.sourceRecovery === 'reset' || this.sourceRecovery === 'unrecovered') return;
    try {
      const state = await this.src.migrationState();
      this.srcState = state;
      const stopped = state === S.STOP || state === S.STOP_COPY || state === S.RESUMING || state === S.ERROR;
      if (p2pFirst ? stopped : state !== S.RUNNING) await this.set('source', p2pFirst ? S.RUNNING_P2P : S.RUNNING, (w) => w);
      this.sourceRecovery = 'running';
    } catch {
      try {
        await this.src.reset();
        this.sourceRecovery = (await this.src.migrationState()) === S.RUNNING ? 'reset' : 'unrecovered';
      } catch {
        this.sourceRecovery = 'unrecovered';
      }
    }
  }

  /** This device's part of a container report. */
  report(): DeviceMigrationReport {
    return {
      name: this.name,
      bytes: { ...this.bytes },
      arcs: [...this.arcs],
      states: [...this.states],
      p2pMs: this.p2pMs,
      ...(this.sourceRecovery === undefined ? {} : { sourceRecovery: this.sourceRecovery }),
    };
  }
}

/**
 * Runs `step` for every leg at once and waits until each has settled (no
 * request is left in flight for a recovery to race).
 * @throws the first leg's error, once all settled.
 */
export async function together(legs: readonly Leg[], step: (leg: Leg) => Promise<void>): Promise<void> {
  const results = await Promise.allSettled(legs.map((leg) => step(leg)));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/**
 * Every source back to RUNNING after an abort or failure. With `p2p` (a
 * container whose devices have P2P states) in the mirror order of the stop:
 * every stopped source to RUNNING_P2P first, then every one to RUNNING — so
 * no device initiates DMA into a peer that is still stopped.
 * @returns the worst recovery among them.
 */
export async function recoverSources(legs: readonly Leg[], p2p: boolean): Promise<DeviceMigrationReport['sourceRecovery']> {
  if (p2p) await Promise.all(legs.filter((leg) => leg.p2p).map((leg) => leg.recoverSource(true)));
  await Promise.all(legs.map((leg) => leg.recoverSource()));
  const order = ['running', 'reset', 'unrecovered'] as const;
  return legs.reduce<(typeof order)[number]>((worst, leg) => {
    const r = leg.sourceRecovery === 'held' || leg.sourceRecovery === undefined ? 'running' : leg.sourceRecovery;
    return order.indexOf(r) > order.indexOf(worst) ? r : worst;
  }, 'running');
}
