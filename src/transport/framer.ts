/**
 * Reassembles vfio-user messages from a byte stream that may split or batch them
 * at any byte, and keeps fds with the message they arrived with. Pure: no I/O.
 *
 * Fd rule: a sender puts a message's fds on the same `sendmsg` as its header,
 * and Linux stops a `recvmsg` right after the segment that carried fds, so the
 * fds of one read belong to the *last* message whose first byte lies in that
 * read (or, if none starts there, to the message in progress). Fds that cannot
 * be placed are closed.
 */
import { ProtocolError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { HEADER_SIZE } from '../protocol/constants.js';
import { decodeHeader, type MessageHeader } from '../protocol/header.js';
import { ReceivedFds, type FdCloser } from './fds.js';
import type { Message } from './transport.js';

/** A framing failure: the stream can no longer be trusted. */
export class FramingError extends ProtocolError {
  /** The header that broke the stream, when there was one. */
  readonly header: MessageHeader | undefined;
  constructor(message: string, errno: number, header?: MessageHeader) {
    super(message, { errno });
    this.name = 'FramingError';
    this.header = header;
  }
}

/** Limits a framer enforces before buffering anything. */
export interface FramerOptions {
  /** Largest acceptable `msg_size` (header included). */
  maxMessageSize: number;
  /** Closes fds that no message can own. */
  closeFd: FdCloser;
}

/** What one {@link Framer.push} produced. */
export interface FramerOutput {
  /** Complete messages, in stream order. */
  messages: Message[];
  /** Set when the stream broke; the framer accepts nothing more. */
  error?: FramingError;
}

interface Partial {
  header: MessageHeader | undefined;
  headerBytes: Uint8Array;
  headerFill: number;
  body: Uint8Array | undefined;
  bodyFill: number;
  fds: number[];
}

/** Incremental message parser for one stream. */
export class Framer {
  readonly #options: FramerOptions;
  #partial: Partial | undefined;
  #error: FramingError | undefined;

  constructor(options: FramerOptions) {
    this.#options = options;
  }

  /** The error that broke the stream, if any. */
  get error(): FramingError | undefined {
    return this.#error;
  }

  /** Whether a message has begun but not completed (an EOF now truncates it). */
  get midMessage(): boolean {
    return this.#partial !== undefined;
  }

  /**
   * Feeds one read. `chunk` is not copied when it holds whole messages: their
   * payloads are views of it, so the caller must never overwrite those bytes.
   */
  push(chunk: Uint8Array, fds: readonly number[] = []): FramerOutput {
    const messages: Message[] = [];
    if (this.#error) {
      this.#closeAll(fds);
      return { messages, error: this.#error };
    }
    // The message that owns this read's fds: the last one to start in it, or
    // else the one that was in progress when it began.
    let owner: number | 'partial' = 'partial';
    let pos = 0;
    if (this.#partial) {
      pos = this.#continuePartial(chunk, 0, messages);
      if (messages.length === 1) owner = 0;
    }
    while (pos < chunk.length && !this.#error) {
      const index = messages.length;
      pos = this.#startMessage(chunk, pos, messages);
      owner = messages.length > index ? index : 'partial';
    }
    this.#placeFds(fds, messages, owner);
    return this.#error ? { messages, error: this.#error } : { messages };
  }

  /** Closes the fds held by an incomplete message (at EOF or close). */
  dispose(): void {
    if (this.#partial) this.#closeAll(this.#partial.fds);
    this.#partial = undefined;
  }

  #placeFds(fds: readonly number[], messages: Message[], owner: number | 'partial'): void {
    if (fds.length === 0) return;
    if (this.#error) return this.#closeAll(fds);
    if (owner === 'partial') {
      if (this.#partial) this.#partial.fds.push(...fds);
      else this.#closeAll(fds);
      return;
    }
    const m = messages[owner] as Message;
    const all = m.fds.count === 0 ? fds : [...m.fds.takeAll(), ...fds];
    messages[owner] = { header: m.header, payload: m.payload, fds: new ReceivedFds(all, this.#options.closeFd) };
  }

  /** Parses a message starting at `pos`; returns the position after what it consumed. */
  #startMessage(chunk: Uint8Array, pos: number, messages: Message[]): number {
    const available = chunk.length - pos;
    if (available >= HEADER_SIZE) {
      const header = decodeHeader(chunk, pos);
      if (!this.#checkSize(header)) return chunk.length;
      if (available >= header.msgSize) {
        const payload = chunk.subarray(pos + HEADER_SIZE, pos + header.msgSize);
        messages.push({ header, payload, fds: ReceivedFds.EMPTY });
        return pos + header.msgSize;
      }
      this.#partial = newPartial();
      this.#partial.header = header;
      this.#partial.body = new Uint8Array(header.msgSize - HEADER_SIZE);
      this.#partial.body.set(chunk.subarray(pos + HEADER_SIZE));
      this.#partial.bodyFill = available - HEADER_SIZE;
      return chunk.length;
    }
    this.#partial = newPartial();
    this.#partial.headerBytes.set(chunk.subarray(pos));
    this.#partial.headerFill = available;
    return chunk.length;
  }

  /** Continues the message in progress; returns the position after what it consumed. */
  #continuePartial(chunk: Uint8Array, pos: number, messages: Message[]): number {
    const p = this.#partial as Partial;
    if (!p.header) {
      const take = Math.min(HEADER_SIZE - p.headerFill, chunk.length - pos);
      p.headerBytes.set(chunk.subarray(pos, pos + take), p.headerFill);
      p.headerFill += take;
      pos += take;
      if (p.headerFill < HEADER_SIZE) return pos;
      p.header = decodeHeader(p.headerBytes, 0);
      if (!this.#checkSize(p.header)) {
        this.#closeAll(p.fds);
        this.#partial = undefined;
        return chunk.length;
      }
      p.body = new Uint8Array(p.header.msgSize - HEADER_SIZE);
    }
    const body = p.body as Uint8Array;
    const take = Math.min(body.length - p.bodyFill, chunk.length - pos);
    body.set(chunk.subarray(pos, pos + take), p.bodyFill);
    p.bodyFill += take;
    pos += take;
    if (p.bodyFill === body.length) {
      const fds = p.fds.length ? new ReceivedFds(p.fds, this.#options.closeFd) : ReceivedFds.EMPTY;
      messages.push({ header: p.header, payload: body, fds });
      this.#partial = undefined;
    }
    return pos;
  }

  /** Enforces the size limits from the header alone, before buffering the body. */
  #checkSize(header: MessageHeader): boolean {
    if (header.msgSize < HEADER_SIZE) {
      this.#error = new FramingError(
        `message ${header.msgId} (cmd ${header.cmd}): msg_size ${header.msgSize} is smaller than the header`,
        Errno.EINVAL,
        header,
      );
    } else if (header.msgSize > this.#options.maxMessageSize) {
      this.#error = new FramingError(
        `message ${header.msgId} (cmd ${header.cmd}): msg_size ${header.msgSize} exceeds the limit of ${this.#options.maxMessageSize}`,
        Errno.EINVAL,
        header,
      );
    }
    return this.#error === undefined;
  }

  #closeAll(fds: readonly number[]): void {
    for (const fd of fds) this.#options.closeFd(fd);
  }
}

function newPartial(): Partial {
  return { header: undefined, headerBytes: new Uint8Array(HEADER_SIZE), headerFill: 0, body: undefined, bodyFill: 0, fds: [] };
}
