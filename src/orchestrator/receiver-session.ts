/**
 * One incoming migration of a {@link MigrationReceiver}: the frames of its
 * channel applied in order to the prepared destination — guest pages into its
 * guest memory, each device's stream into that device's session — and the
 * sender's requests answered, until the commit or the end. With several
 * devices (a container: channel.ts, `channelVersion` 2) they commit together
 * (every one RUNNING, one decision) or are all reset: the guest runs once.
 */
import type { VfioUserClient } from '../client/client.js';
import { MigrationState as S } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import { ChannelFrame, decodeMessage, decodeZero, encodeMessage, memoryParts, type Frame } from './channel.js';
import { errnoOf, MigrationChannelError, type ChannelSocket, type WireError } from './channel-socket.js';
import { describeSide, resetToRunning } from './destination.js';
import type { ChannelPhase, MigrationLedger } from './ledger.js';
import { writeParts, zeroFill } from './memory-copy.js';
import { readHello } from './receiver-hello.js';
import type { PreparedDestination, ReceiveOutcome, ReceiverOptions } from './receiver.js';

/** States the sender may ask a destination device for. */
const SETTABLE = new Set<number>([S.RESUMING, S.STOP, S.RUNNING_P2P, S.RUNNING]);
/** Stop reading while this much is queued to apply. */
const QUEUE_HIGH = 64 << 20;

/** One destination device of the migration. */
interface Slot {
  name: string;
  client: VfioUserClient;
  /** Device-stream bytes applied. */
  bytes: bigint;
  /** The last state the sender set (undefined before the first). */
  state: number | undefined;
}

type Outcome = { result: unknown; body?: Uint8Array } | { error: WireError };

/** One incoming migration. */
export class Session {
  readonly migrationId: string;
  readonly #channel: ChannelSocket;
  readonly #options: ReceiverOptions;
  readonly #ledger: MigrationLedger;
  readonly #done: (outcome: ReceiveOutcome) => void;
  readonly #queue: Frame[] = [];
  #queued = 0;
  #working = false;
  /** `set` requests running side by side, by device index (#work). */
  readonly #setting = new Map<number, Promise<void>>();
  #prepared: PreparedDestination | undefined;
  #slots: Slot[] = [];
  #committed = false;
  #finished = false;
  #phase: ChannelPhase = 'connect';
  /** The first streamed frame that could not be applied: everything after it is dropped, every request fails with it. */
  #streamError: WireError | undefined;
  #memoryBytes = 0n;
  #vmState: Uint8Array | undefined;
  #commitOutcome: ReceiveOutcome | undefined;
  readonly #peer: string;

  constructor(channel: ChannelSocket, peer: string, migrationId: string, options: ReceiverOptions, ledger: MigrationLedger, done: (outcome: ReceiveOutcome) => void) {
    this.migrationId = migrationId;
    this.#channel = channel;
    this.#peer = peer;
    this.#options = options;
    this.#ledger = ledger;
    this.#done = done;
    this.#enter('connect');
  }

  enqueue(frame: Frame): void {
    this.#queue.push(frame);
    this.#queued += frame.length;
    if (this.#queued > QUEUE_HIGH) this.#channel.pauseReading(true);
    if (!this.#working) void this.#work();
  }

  /**
   * Abandons the migration now unless it committed (SIGTERM, or its sender
   * asking for the outcome): recorded at once, the sender told by a NOTICE,
   * then the devices reset and the side released.
   */
  abandon(reason: string): void {
    if (this.#committed || this.#finished) return;
    void this.#finish(reason, true);
  }

  async closed(error: Error | undefined): Promise<void> {
    if (this.#committed || this.#finished) {
      const first = !this.#finished;
      this.#finished = true;
      if (first && this.#commitOutcome) this.#options.onCommittedClosed?.(this.#commitOutcome);
      return;
    }
    await this.#finish(error ? `channel lost: ${error.message}` : 'the sender closed the channel before the commit');
  }

  #enter(phase: ChannelPhase): void {
    this.#phase = phase;
    this.#ledger.record({ migrationId: this.migrationId, outcome: 'in-progress', phase });
  }

  /**
   * Applies the queued frames in order. Consecutive `set` requests of a
   * container's different devices (the orchestrator sends one per device at
   * once) run side by side: each still follows every frame before it, and any
   * other frame waits for them — so a round of N state changes costs the
   * slowest device's, not the sum.
   */
  async #work(): Promise<void> {
    this.#working = true;
    for (let frame = this.#queue.shift(); frame !== undefined && !this.#finished; frame = this.#queue.shift()) {
      this.#queued -= frame.length;
      if (this.#queued <= QUEUE_HIGH / 2) this.#channel.pauseReading(false);
      const device = this.#setOfDevice(frame);
      if (device !== undefined && !this.#setting.has(device)) {
        this.#setting.set(device, this.#request(frame).finally(() => this.#setting.delete(device)));
        continue;
      }
      await Promise.all(this.#setting.values());
      await this.#handle(frame);
    }
    this.#working = false;
  }

  /** The device index of a `set` request that may run beside others (a container's, the stream intact), else undefined. */
  #setOfDevice(frame: Frame): number | undefined {
    if (frame.type !== ChannelFrame.REQUEST || this.#slots.length < 2 || this.#streamError || this.#committed) return undefined;
    try {
      const h = decodeMessage(frame.payload).head as { op?: unknown; args?: { device?: unknown } };
      const device = h.op === 'set' ? h.args?.device : undefined;
      return typeof device === 'number' && this.#slots[device] !== undefined ? device : undefined;
    } catch {
      return undefined; // answered (refused) in order by #request
    }
  }

  async #handle(frame: Frame): Promise<void> {
    switch (frame.type) {
      case ChannelFrame.MEMORY:
      case ChannelFrame.ZERO:
      case ChannelFrame.DEVICE_DATA:
        return this.#apply(frame);
      case ChannelFrame.REQUEST:
        return this.#request(frame);
      default:
        return this.#fail({ errno: Errno.EPROTO, message: `unexpected frame type ${frame.type}` });
    }
  }

  /** A streamed frame: applied, or the first failure reported (NOTICE) and the rest dropped. */
  async #apply(frame: Frame): Promise<void> {
    if (this.#streamError) return;
    const side = this.#prepared?.side;
    const isDevice = frame.type === ChannelFrame.DEVICE_DATA;
    try {
      if (side === undefined || this.#committed) throw new MigrationChannelError('data outside a migration', Errno.EPROTO);
      if (frame.type === ChannelFrame.MEMORY) {
        const { gpa, parts, length } = memoryParts(frame);
        writeParts(side.memory, gpa, parts, length); // EFAULT outside the guest memory
        this.#memoryBytes += BigInt(length);
      } else if (frame.type === ChannelFrame.ZERO) {
        const { gpa, length } = decodeZero(frame.payload);
        zeroFill(side.memory, gpa, length); // EFAULT outside the guest memory; writes only where not already zero
        this.#memoryBytes += BigInt(length);
      } else {
        const slot = this.#slots[frame.id];
        if (slot === undefined) throw new MigrationChannelError(`device ${frame.id}: this migration has ${this.#slots.length}`, Errno.EPROTO);
        await slot.client.migDataWrite(frame.payload);
        slot.bytes += BigInt(frame.payload.length);
      }
    } catch (error) {
      const slot = isDevice ? this.#slots[frame.id] : undefined;
      const what = isDevice ? `device ${slot && this.#slots.length > 1 ? `'${slot.name}' ` : ''}stream` : 'guest memory';
      this.#streamError = { errno: errnoOf(error), message: `${what} frame ${frame.seq}: ${(error as Error).message}` };
      const notice = { ...this.#streamError, ...(isDevice ? { device: frame.id } : {}) };
      await this.#channel.send(ChannelFrame.NOTICE, 0, encodeMessage(notice)).catch(() => undefined);
    }
  }

  async #request(frame: Frame): Promise<void> {
    let outcome: Outcome;
    let op = '?';
    try {
      const { head, body } = decodeMessage(frame.payload);
      const h = head as { op?: unknown; args?: unknown };
      op = typeof h.op === 'string' ? h.op : '?';
      outcome = await this.#op(op, (h.args ?? {}) as Record<string, unknown>, body);
    } catch (error) {
      outcome = { error: { errno: errnoOf(error), message: `${op}: ${(error as Error).message}` } };
    }
    if (this.#finished && !this.#committed) return; // abandoned meanwhile: the NOTICE said so
    await this.#channel.respond(frame.id, outcome).catch(() => undefined);
    if (op === 'abandon') await this.#finish('the sender abandoned the migration');
    else if (op === 'hello' && 'error' in outcome) await this.#finish(`refused: ${outcome.error.message}`);
  }

  async #op(op: string, args: Record<string, unknown>, body: Uint8Array): Promise<{ result: unknown; body?: Uint8Array }> {
    if (op === 'hello') return { result: await this.#hello(args) };
    const prepared = this.#prepared;
    if (prepared === undefined) throw new MigrationChannelError(`'${op}' before hello`, Errno.EPROTO);
    if (op === 'message') return this.#message(args, body, prepared);
    if (op === 'abandon') return { result: null };
    if (this.#streamError && op !== 'state') throw new MigrationChannelError(this.#streamError.message, this.#streamError.errno);
    if (this.#committed) throw new MigrationChannelError(`'${op}' after the commit`, Errno.EINVAL);
    switch (op) {
      case 'describe':
        return { result: await describeSide({ ...prepared.side, client: this.#slot(args).client }) };
      case 'state':
        return { result: await this.#slot(args).client.migrationState() };
      case 'arcs': {
        const { client } = this.#slot(args);
        return { result: client.migrationExtensions.arcLatency === undefined ? [] : await client.arcLatencies() };
      }
      case 'set':
        return this.#set(this.#slot(args), args.state);
      case 'flush':
        return { result: null };
      case 'vmstate':
        this.#vmState = new Uint8Array(body);
        return { result: null };
      case 'complete':
        return this.#commit(prepared);
      default:
        throw new MigrationChannelError(`unknown request '${op}'`, Errno.ENOSYS);
    }
  }

  /** The device a request names (`device`: its index, default 0). @throws {MigrationChannelError} EINVAL for no such device. */
  #slot(args: Record<string, unknown>): Slot {
    const index = args.device ?? 0;
    const slot = typeof index === 'number' && Number.isInteger(index) ? this.#slots[index] : undefined;
    if (slot === undefined) throw new MigrationChannelError(`no device ${String(index)} (this migration has ${this.#slots.length})`, Errno.EINVAL);
    return slot;
  }

  /** A device's state change; the phase follows the devices: `switchover` at the first STOP, `commit` when all run again. */
  async #set(slot: Slot, state: unknown): Promise<{ result: null }> {
    if (typeof state !== 'number' || !SETTABLE.has(state)) throw new MigrationChannelError(`state ${String(state)} may not be requested of a destination`, Errno.EINVAL);
    await slot.client.setMigrationState(state);
    slot.state = state;
    if (!this.#finished) {
      if (state === S.STOP && this.#phase === 'precopy') this.#enter('switchover');
      else if (state === S.RUNNING && this.#phase === 'switchover' && this.#slots.every((s) => s.state === S.RUNNING)) this.#enter('commit');
    }
    return { result: null };
  }

  /**
   * The commit of every device at once: decided in one turn of the event loop
   * after the checks (every device RUNNING), so an abandon (SIGTERM, a fence)
   * is either before it or after it.
   */
  async #commit(prepared: PreparedDestination): Promise<{ result: null }> {
    await this.#options.beforeCommit?.(this.migrationId);
    const states = await Promise.all(this.#slots.map((s) => s.client.migrationState()));
    if (this.#finished) throw new MigrationChannelError('the migration was abandoned before the commit', Errno.ECANCELED);
    const idle = this.#slots.filter((_s, i) => states[i] !== S.RUNNING).map((s) => `'${s.name}'`);
    if (idle.length > 0) throw new MigrationChannelError(`the destination device${idle.length > 1 ? 's' : ''} ${idle.join(', ')} ${idle.length > 1 ? 'are' : 'is'} not RUNNING`, Errno.EINVAL);
    this.#committed = true;
    this.#phase = 'done';
    this.#ledger.record({ migrationId: this.migrationId, outcome: 'committed', phase: 'done' });
    this.#commitOutcome = { ...this.#outcome('committed', 'done'), destination: prepared, ...(this.#vmState ? { vmState: this.#vmState } : {}) };
    this.#done(this.#commitOutcome);
    await this.#options.afterCommit?.(this.migrationId);
    return { result: null };
  }

  async #hello(args: Record<string, unknown>): Promise<unknown> {
    if (this.#prepared !== undefined) throw new MigrationChannelError('hello twice', Errno.EPROTO);
    const hello = readHello(args, this.#options.maxMemoryBytes ?? 64n << 30n);
    const prepared = await this.#options.prepare({ memory: hello.memory, peer: this.#peer, devices: hello.devices });
    const clients = prepared.clients ?? [prepared.side.client];
    if (this.#finished || clients.length !== hello.devices.length || clients[0] !== prepared.side.client) {
      // abandoned while preparing (SIGTERM), or not what was offered: nothing will use it
      await prepared.release().catch(() => undefined);
      if (this.#finished) throw new MigrationChannelError('the migration was abandoned', Errno.ECANCELED);
      throw new MigrationChannelError(`this receiver prepared ${clients.length} device session(s) for ${hello.devices.length} device(s) offered`, Errno.EINVAL);
    }
    this.#prepared = prepared;
    this.#slots = hello.devices.map((d, i) => ({ name: d.name, client: clients[i] as VfioUserClient, bytes: 0n, state: undefined }));
    this.#enter('precopy');
    const devices = this.#slots.map((s) => ({ name: s.name, maxTransferSize: s.client.maxTransferSize }));
    const maxTransferSize = Math.min(...devices.map((d) => d.maxTransferSize));
    return { channelVersion: hello.version, maxTransferSize, migrationId: this.migrationId, features: hello.features, devices };
  }

  async #message(args: Record<string, unknown>, body: Uint8Array, prepared: PreparedDestination): Promise<{ result: unknown; body?: Uint8Array }> {
    if (!this.#committed) throw new MigrationChannelError('messages are for a committed migration', Errno.EINVAL);
    if (this.#options.onMessage === undefined) throw new MigrationChannelError('this receiver takes no messages', Errno.ENOSYS);
    return this.#options.onMessage(args, body, prepared);
  }

  async #fail(error: WireError): Promise<void> {
    await this.#channel.send(ChannelFrame.NOTICE, 0, encodeMessage(error)).catch(() => undefined);
    this.#channel.destroy(new MigrationChannelError(error.message, error.errno));
  }

  #outcome(outcome: ReceiveOutcome['outcome'], phase: ChannelPhase): ReceiveOutcome {
    const devices = this.#slots.map((s) => ({ name: s.name, deviceBytes: s.bytes }));
    const deviceBytes = devices.reduce((n, d) => n + d.deviceBytes, 0n);
    return { outcome, migrationId: this.migrationId, phase, peer: this.#peer, memoryBytes: this.#memoryBytes, deviceBytes, devices };
  }

  /**
   * The end of an uncommitted migration: recorded as abandoned at once; the
   * sender told (`notify`: the receiver decided it), then every device reset
   * to RUNNING and the side released.
   */
  async #finish(reason: string, notify = false): Promise<void> {
    if (this.#finished || this.#committed) return;
    this.#finished = true;
    const phase = this.#phase;
    this.#ledger.record({ migrationId: this.migrationId, outcome: 'abandoned', phase, reason });
    if (notify) {
      const notice = { errno: Errno.ECANCELED, message: `the receiver abandoned migration ${this.migrationId}: ${reason}`, outcome: 'abandoned', migrationId: this.migrationId, phase };
      void this.#channel.send(ChannelFrame.NOTICE, 0, encodeMessage(notice)).catch(() => undefined);
      this.#channel.end();
      setTimeout(() => this.#channel.destroy(), 1000).unref();
    } else this.#channel.destroy();
    const prepared = this.#prepared;
    if (prepared !== undefined) {
      await Promise.all(this.#slots.map((s) => resetToRunning(s.client)));
      await prepared.release().catch(() => undefined);
    }
    this.#done({ ...this.#outcome(prepared ? 'abandoned' : 'refused', phase), reason });
  }
}
