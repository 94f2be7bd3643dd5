/**
 * Replays one recorded session against a device: sends the recorded client's
 * commands (its side as it crossed the mediator's client-facing socket) with
 * the recorded msgIds and recreated fds, answers the device's DMA requests
 * from the recreated memory, and compares each reply (and each device
 * request) with the recorded one where the recording has it. The recording's
 * order is kept: a command the recorded client sent before an earlier reply
 * arrived is sent before that reply is awaited (pipelining as recorded).
 */
import { ProtocolError, VfioUserError } from '../errors.js';
import { Command, HeaderFlags, commandName } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import { isReply, wantsReply, type MessageHeader } from '../protocol/header.js';
import { decodeDmaMapRequest, decodeDmaReadRequest, decodeDmaUnmapRequest, decodeDmaWriteRequest, encodeDmaAccess, encodeDmaAccessWithData, type DmaUnmapRequest } from '../protocol/dma.js';
import { connectUnix } from '../transport/unix-listener.js';
import { UnixSocketTransport } from '../transport/unix-socket.js';
import type { Message, Transport } from '../transport/transport.js';
import type { Logger } from '../log.js';
import { native } from '../native/addon.js';
import { RecordLimits, type FdKind, type MessageRecord, type RecordEntry } from './record-format.js';
import { describeFd } from './record-fds.js';
import { ReplayFds } from './replay-fds.js';
import { ReplayMemory, writeSealed, type DmaReadSeeds } from './replay-memory.js';
import { DifferenceKind, compareMessages, describeFields, type ComparedMessage, type ReplayDifference } from './replay-compare.js';

/** Options of {@link replaySession}. */
export interface SessionReplayOptions {
  session: number;
  to: string;
  timing: 'asap' | 'recorded';
  timeoutMs: number;
  log: Logger;
  seeds: DmaReadSeeds;
  maxSparseBytes?: number;
  /** Differences listed at most (the rest counted). */
  maxDifferences: number;
}

/** What one session's replay found. */
export interface SessionReplayResult {
  messages: number;
  replies: number;
  differences: ReplayDifference[];
  /** Differences beyond `maxDifferences`, counted only. */
  omitted: number;
  notes: string[];
}

interface Actual extends ComparedMessage {
  channel: 'main' | 'twin';
}

interface Pending {
  index: number;
  cmd: number;
  unmap: DmaUnmapRequest | undefined;
  reply: Actual | undefined;
  waiter: (() => void) | undefined;
}

/** Device requests kept while waiting to be compared (beyond: the oldest are dropped and noted). */
const MAX_DEVICE_REQUESTS = 4096;
/** … and their payload bytes. */
const MAX_DEVICE_BYTES = 64 * 1024 * 1024;
const MAX_MESSAGE = RecordLimits.payload + 64;

/**
 * Replays the records of one session (already filtered to it).
 * @throws {SystemError} ENOENT, ECONNREFUSED, EACCES when `to` cannot be connected.
 */
export async function replaySession(records: AsyncIterable<RecordEntry>, options: SessionReplayOptions): Promise<SessionReplayResult> {
  const transport = await connectUnix(options.to, { timeoutMs: options.timeoutMs, transport: { maxMessageSize: MAX_MESSAGE } });
  const replay = new SessionReplay(transport, options);
  try {
    await replay.run(records);
  } finally {
    replay.dispose();
  }
  return replay.result();
}

class SessionReplay {
  readonly #o: SessionReplayOptions;
  readonly #main: UnixSocketTransport;
  #twin: UnixSocketTransport | undefined;
  readonly #memory: ReplayMemory;
  readonly #fds = new ReplayFds();
  readonly #pending = new Map<number, Pending>();
  readonly #timedOut = new Set<number>();
  readonly #deviceRequests: Actual[] = [];
  #deviceWaiter: (() => void) | undefined;
  #closed = false;
  /** The device closed the connection and a command or reply was missed: the rest of the session is not replayed. */
  #stopped = false;
  #deferred: { record: MessageRecord; fds: number[]; index: number } | undefined;
  #commands = 0;
  #deviceIndex = 0;
  #replies = 0;
  readonly #differences: ReplayDifference[] = [];
  #omitted = 0;
  #deviceBytes = 0;
  readonly #notes = new Set<string>();
  #startMs = 0;
  #firstNs: bigint | undefined;

  constructor(transport: UnixSocketTransport, options: SessionReplayOptions) {
    this.#o = options;
    this.#main = transport;
    this.#memory = new ReplayMemory({ seeds: options.seeds, log: options.log, ...(options.maxSparseBytes === undefined ? {} : { maxSparseBytes: options.maxSparseBytes }) });
    transport.start({ onMessage: (m) => this.#onMessage(m, transport, 'main'), onClose: () => this.#onClose() });
  }

  result(): SessionReplayResult {
    return { messages: this.#commands, replies: this.#replies, differences: this.#differences, omitted: this.#omitted, notes: [...this.#notes, ...this.#fds.notes] };
  }

  async run(records: AsyncIterable<RecordEntry>): Promise<void> {
    this.#startMs = performance.now();
    for await (const r of records) {
      this.#firstNs ??= r.timeNs;
      if (r.type === 'content') {
        const fd = this.#deferred?.fds[r.fd];
        if (fd !== undefined) this.#fds.content(fd, r.at, r.data);
        continue;
      }
      await this.#send();
      if (this.#stopped || r.type === 'session-end') break;
      if (r.type !== 'message' || r.side !== 'client') continue;
      const reply = isReply(r.header);
      if (r.direction === 'in' && !reply) this.#defer(r);
      else if (r.direction === 'out' && reply) await this.#expectReply(r);
      else if (r.direction === 'out') await this.#expectDeviceRequest(r);
    }
    await this.#send();
    for (const extra of this.#deviceRequests.splice(0)) this.#unexpectedRequest(extra);
  }

  dispose(): void {
    this.#twin?.close();
    this.#main.close();
    this.#memory.dispose();
    this.#fds.closeAll();
  }

  /** A recorded client command: its fds made now, sent once its content records are in. */
  #defer(r: MessageRecord): void {
    const index = this.#commands++;
    if (r.truncated) {
      this.#found(this.#difference(r, index, DifferenceKind.SEND_FAILED, [], 'the recorded payload was cut (larger than 16 MiB): not sent'));
      return;
    }
    try {
      this.#deferred = { record: r, fds: this.#fds.forMessage(r.fds), index };
    } catch (error) {
      this.#found(this.#difference(r, index, DifferenceKind.SEND_FAILED, [], `its fds could not be recreated: ${(error as Error).message}`));
    }
  }

  async #send(): Promise<void> {
    const d = this.#deferred;
    if (!d) return;
    this.#deferred = undefined;
    this.#fds.seal();
    if (this.#o.timing === 'recorded') await this.#waitUntil(d.record.timeNs);
    const { header, payload } = d.record;
    if (this.#closed) {
      this.#found(this.#difference(d.record, d.index, DifferenceKind.CLOSED, [], 'the device closed the connection before this command; the rest of the session was not replayed'));
      this.#stopped = true;
      return;
    }
    const p: Pending = { index: d.index, cmd: header.cmd, unmap: undefined, reply: undefined, waiter: undefined };
    this.#track(d.record, d.fds, p);
    if (wantsReply(header)) this.#pending.set(header.msgId, p);
    this.#main.send({ msgId: header.msgId, cmd: header.cmd, flags: header.flags, errorNo: header.errorNo }, payload, d.fds);
  }

  /** DMA_MAP: the recreated memory is mapped here too; DMA_UNMAP: applied once the device answered. */
  #track(r: MessageRecord, fds: number[], p: Pending): void {
    try {
      if (r.header.cmd === Command.DMA_MAP) this.#memory.map(decodeDmaMapRequest(r.payload), fds[0], !writeSealed(r.fds[0]?.seals));
      if (r.header.cmd === Command.DMA_UNMAP) p.unmap = decodeDmaUnmapRequest(r.payload);
    } catch (error) {
      this.#o.log.debug({ err: error, index: p.index }, 'replay: a DMA command did not decode; the device will say so');
    }
  }

  async #waitUntil(timeNs: bigint): Promise<void> {
    const due = Number(timeNs - (this.#firstNs ?? timeNs)) / 1e6 - (performance.now() - this.#startMs);
    if (due > 1) await new Promise((resolve) => setTimeout(resolve, due));
  }

  async #expectReply(r: MessageRecord): Promise<void> {
    const p = this.#pending.get(r.header.msgId);
    if (!p) return; // a reply to a command not replayed (cut, or not recreated): nothing to compare
    const got = p.reply ?? (await this.#wait(p));
    this.#pending.delete(r.header.msgId);
    if (got === 'timeout') {
      this.#timedOut.add(r.header.msgId);
      this.#found(this.#difference(r, p.index, DifferenceKind.TIMEOUT, [], `no reply within ${this.#o.timeoutMs} ms`));
      return;
    }
    if (got === 'closed') {
      this.#found(this.#difference(r, p.index, DifferenceKind.CLOSED, [], 'the device closed the connection instead of replying; the rest of the session was not replayed'));
      this.#stopped = true;
      return;
    }
    const expected: ComparedMessage = { header: r.header, payload: r.payload, fds: r.fds.map((f) => f.kind), truncated: r.truncated };
    const diff = compareMessages(expected, got);
    if (diff.fields.length > 0) this.#found({ ...this.#difference(r, p.index, DifferenceKind.REPLY, diff.fields, describeFields(diff.fields)), ...diff });
  }

  #wait(p: Pending): Promise<Actual | 'timeout' | 'closed'> {
    if (this.#closed) return Promise.resolve('closed');
    return new Promise((resolve) => {
      const timer = this.#o.timeoutMs > 0 ? setTimeout(() => finish('timeout'), this.#o.timeoutMs) : undefined;
      const finish = (v: Actual | 'timeout' | 'closed'): void => {
        clearTimeout(timer);
        p.waiter = undefined;
        resolve(v);
      };
      p.waiter = () => finish(p.reply ?? 'closed');
    });
  }

  async #expectDeviceRequest(r: MessageRecord): Promise<void> {
    const expected: ComparedMessage = { header: r.header, payload: r.payload, fds: r.fds.map((f) => f.kind), truncated: r.truncated };
    let got = this.#takeDeviceRequest();
    if (!got && !this.#closed) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, this.#o.timeoutMs || 10_000);
        function done(): void {
          clearTimeout(timer);
          resolve();
        }
        this.#deviceWaiter = done;
      });
      this.#deviceWaiter = undefined;
      got = this.#takeDeviceRequest();
    }
    const index = this.#deviceIndex++;
    if (!got) {
      this.#found(this.#difference(r, index, DifferenceKind.MISSING_DEVICE_REQUEST, [], 'the device did not send this request'));
      return;
    }
    const diff = compareMessages(expected, got);
    if (r.channel !== got.channel) diff.fields.push({ field: 'channel', expected: r.channel, got: got.channel });
    if (diff.fields.length > 0) this.#found({ ...this.#difference(r, index, DifferenceKind.DEVICE_REQUEST, diff.fields, describeFields(diff.fields)), ...diff });
  }

  #takeDeviceRequest(): Actual | undefined {
    const got = this.#deviceRequests.shift();
    if (got) this.#deviceBytes -= got.payload.length;
    return got;
  }

  #unexpectedRequest(got: Actual): void {
    const index = this.#deviceIndex++;
    this.#found({
      session: this.#o.session, index, record: -1, msgId: got.header.msgId, command: commandName(got.header.cmd), kind: DifferenceKind.UNEXPECTED_DEVICE_REQUEST, fields: [],
      summary: `the device sent ${commandName(got.header.cmd)} (${got.payload.length}-byte payload) that the recording does not have`,
    });
  }

  /** Keeps a difference, or only counts it beyond `maxDifferences`. */
  #found(d: ReplayDifference): void {
    if (this.#differences.length < this.#o.maxDifferences) this.#differences.push(d);
    else this.#omitted++;
  }

  #difference(r: MessageRecord, index: number, kind: DifferenceKind, fields: ReplayDifference['fields'], summary: string): ReplayDifference {
    return { session: this.#o.session, index, record: r.index, msgId: r.header.msgId, command: commandName(r.header.cmd), kind, fields, summary };
  }

  // ------------------------------------------------------------- from the device

  #onMessage(m: Message, via: Transport, channel: 'main' | 'twin'): void {
    const p = isReply(m.header) ? this.#pending.get(m.header.msgId) : undefined;
    const fds = this.#classify(m, p?.cmd === Command.VERSION && channel === 'main');
    const actual: Actual = { header: m.header, payload: m.payload, fds, channel };
    if (!isReply(m.header)) {
      this.#answer(m, via);
      while (this.#deviceRequests.length > 0 && (this.#deviceRequests.length >= MAX_DEVICE_REQUESTS || this.#deviceBytes + m.payload.length > MAX_DEVICE_BYTES)) {
        this.#deviceBytes -= this.#deviceRequests.shift()!.payload.length;
        this.#notes.add('more device requests waited to be compared than are kept; the oldest were dropped');
      }
      this.#deviceRequests.push(actual);
      this.#deviceBytes += m.payload.length;
      this.#deviceWaiter?.();
      return;
    }
    if (!p || p.reply) {
      if (this.#timedOut.delete(m.header.msgId)) this.#notes.add('a reply arrived after its timeout');
      else this.#found({ session: this.#o.session, index: -1, record: -1, msgId: m.header.msgId, command: commandName(m.header.cmd), kind: DifferenceKind.UNEXPECTED_REPLY, fields: [], summary: `a reply to msgId ${m.header.msgId}, which awaits none` });
      return;
    }
    if (p.unmap && !m.header.errorNo) this.#memory.unmap(p.unmap);
    this.#replies++;
    p.reply = actual;
    p.waiter?.();
  }

  /** The kinds of a message's fds, then closed — except the twin socket a VERSION reply brings, adopted. */
  #classify(m: Message, version: boolean): FdKind[] {
    const kinds: FdKind[] = [];
    for (const fd of m.fds.takeAll()) {
      const kind = describeFd(fd).meta.kind;
      kinds.push(kind);
      if (version && kind === 'socket' && !this.#twin) this.#adoptTwin(fd);
      else native.close(fd);
    }
    return kinds;
  }

  #adoptTwin(fd: number): void {
    const twin = new UnixSocketTransport(fd, { maxMessageSize: MAX_MESSAGE });
    this.#twin = twin;
    twin.start({ onMessage: (m) => this.#onMessage(m, twin, 'twin'), onClose: () => {} });
  }

  #answer(m: Message, via: Transport): void {
    const base = { msgId: m.header.msgId, cmd: m.header.cmd };
    try {
      via.send({ ...base, flags: HeaderFlags.TYPE_REPLY }, this.#serveDma(m.header, m.payload));
    } catch (error) {
      if (via.closed) return;
      const errno = error instanceof VfioUserError && error.errno ? error.errno : Errno.EINVAL;
      via.send({ ...base, flags: HeaderFlags.TYPE_REPLY | HeaderFlags.ERROR, errorNo: errno });
    }
  }

  #serveDma(header: MessageHeader, payload: Uint8Array): Uint8Array {
    if (header.cmd === Command.DMA_READ) {
      const a = decodeDmaReadRequest(payload);
      if (a.count > BigInt(RecordLimits.payload)) throw new ProtocolError(`DMA_READ of ${a.count} bytes`, { errno: Errno.EINVAL });
      return encodeDmaAccessWithData({ addr: a.addr, count: a.count, data: this.#memory.read(a.addr, Number(a.count)) });
    }
    if (header.cmd === Command.DMA_WRITE) {
      const a = decodeDmaWriteRequest(payload);
      this.#memory.write(a.addr, a.data);
      return encodeDmaAccess({ addr: a.addr, count: a.count });
    }
    throw new ProtocolError(`the device sent ${commandName(header.cmd)}, which only clients send`);
  }

  #onClose(): void {
    this.#closed = true;
    for (const p of this.#pending.values()) p.waiter?.();
    this.#deviceWaiter?.();
  }
}
