/**
 * The recorder: a {@link MediatorTap} writing every message that crosses the
 * mediator (client side; the upstream side too when asked) to one file in the
 * format of record-format.ts, every session of the mediator in it (records
 * carry their session number). Writes are queued and go out asynchronously,
 * one `writev` at a time, so the relay never waits for the disk; the queue is
 * bounded, and when the disk is slower than the traffic whole records are
 * dropped, counted, logged, and a `dropped` note is written into the file once
 * the queue has room again (a replay reports it).
 */
import { closeSync, openSync, writeSync, writev } from 'node:fs';
import { InvalidArgumentError } from '../errors.js';
import { getDefaultLogger, type Logger } from '../log.js';
import type { MessageHeader } from '../protocol/header.js';
import { VERSION } from '../version.js';
import { describeFd, readContent } from './record-fds.js';
import {
  RECORD_FORMAT_VERSION, RecordLimits, encodeContentRecord, encodeFilePrefix, encodeMessageRecord, encodeNote, encodeSessionEnd, encodeSessionStart,
  type FdMeta, type RecordingHeader,
} from './record-format.js';
import type { MediatorSessionContext, MediatorTap, TapSide } from './types.js';

/** Options of {@link createRecorder}. */
export interface RecorderOptions {
  /** Record the upstream side too (what the mediator sent to and received from the device). Default false. */
  upstream?: boolean;
  /** Largest file size in bytes; once reached, a `limit` note ends the recording (default: no limit). */
  maxBytes?: number;
  /** Capture the content of memfds and regular files up to this size that the client passes (DMA memory), so a replay recreates it. Default 0 (none). */
  captureMemory?: number;
  /** Bytes queued for the disk beyond which records are dropped (default 16 MiB; raised to hold one captured fd and its message). */
  bufferBytes?: number;
  /** The upstream socket, written in the file's header. */
  upstreamPath?: string;
  log?: Logger;
}

/** What a recorder has done so far. */
export interface RecorderStats {
  sessions: number;
  /** Records accepted (written or queued). */
  records: number;
  /** Bytes of the file, header included, written or queued. */
  bytes: number;
  /** Records left out because the queue was full or the size limit was reached. */
  droppedRecords: number;
  droppedBytes: number;
  /** `maxBytes` was reached. */
  limitReached: boolean;
  /** The first write error, after which nothing more is written. */
  writeError: Error | undefined;
}

/** A recorder: pass it in `MediatorOptions.taps`; {@link close} it after the mediator. */
export interface Recorder extends MediatorTap {
  readonly path: string;
  stats(): RecorderStats;
  /**
   * Writes what is queued and closes the file. Idempotent.
   * @throws the first write error (ENOSPC, EIO) if the file is incomplete.
   */
  close(): Promise<void>;
}

const DEFAULT_BUFFER = 16 * 1024 * 1024;
/** Room kept below `maxBytes` for the note saying it was reached. */
const NOTE_ROOM = 4096;
/** Queued bytes that are written at the next turn … */
const FLUSH_BYTES = 64 * 1024;
/** … and how long fewer may wait (what a crash can lose). */
const FLUSH_MS = 10;
const NO_FDS: readonly FdMeta[] = [];

function checkSize(value: number | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 0) throw new InvalidArgumentError(`createRecorder: ${name} must be a non-negative integer, not ${value}`);
  return value;
}

/**
 * Opens `path` (created or truncated, mode 0600) and returns a tap that records into it.
 * @throws {InvalidArgumentError} EINVAL for a bad option.
 * @throws the `fs` error (ENOENT for a missing directory, EACCES, EISDIR) when the file cannot be created.
 */
export function createRecorder(path: string, options: RecorderOptions = {}): Recorder {
  return new FileRecorder(path, options);
}

class FileRecorder implements Recorder {
  readonly path: string;
  readonly upstream: boolean;
  readonly #fd: number;
  readonly #log: Logger;
  readonly #startNs = process.hrtime.bigint();
  readonly #maxBytes: number;
  readonly #captureMemory: number;
  readonly #bufferBytes: number;
  /** Live sessions: each one's file identities (dev:ino → ident). */
  readonly #sessions = new Map<number, Map<string, number>>();
  #sessionCount = 0;
  #queue: Uint8Array[] = [];
  /** The last queued bytes, still growing: a slab's subarray and how much of it is queued. */
  #open: Uint8Array | undefined;
  #openLength = 0;
  #timer: NodeJS.Timeout | undefined;
  #immediate: NodeJS.Immediate | undefined;
  #queued = 0;
  #writing = 0;
  #bytes = 0;
  #records = 0;
  #dropped = { records: 0, bytes: 0, pending: 0, pendingBytes: 0 };
  #limitReached = false;
  #error: Error | undefined;
  #closed = false;
  #idle: (() => void)[] = [];

  constructor(path: string, o: RecorderOptions) {
    this.path = path;
    this.upstream = o.upstream ?? false;
    this.#log = (o.log ?? getDefaultLogger()).child({ recorder: path });
    this.#maxBytes = checkSize(o.maxBytes, 'maxBytes', Number.MAX_SAFE_INTEGER);
    this.#captureMemory = checkSize(o.captureMemory, 'captureMemory', 0);
    // A captured fd's content is queued with its message as one group: the buffer must hold one.
    const floor = this.#captureMemory > 0 ? this.#captureMemory + 2 * RecordLimits.chunk : 0;
    this.#bufferBytes = Math.max(checkSize(o.bufferBytes, 'bufferBytes', DEFAULT_BUFFER), floor);
    const header: RecordingHeader = {
      format: 'vfio-user-recording',
      version: RECORD_FORMAT_VERSION,
      created: new Date().toISOString(),
      createdUnixMs: Date.now(),
      package: 'vfio-user',
      packageVersion: VERSION,
      ...(o.upstreamPath === undefined ? {} : { upstream: o.upstreamPath }),
      upstreamSide: this.upstream,
      captureMemory: this.#captureMemory,
    };
    const prefix = encodeFilePrefix(header);
    this.#fd = openSync(path, 'w', 0o600);
    try {
      writeSync(this.#fd, prefix);
    } catch (error) {
      closeSync(this.#fd);
      throw error;
    }
    this.#bytes = prefix.length;
  }

  stats(): RecorderStats {
    return {
      sessions: this.#sessionCount,
      records: this.#records,
      bytes: this.#bytes,
      droppedRecords: this.#dropped.records,
      droppedBytes: this.#dropped.bytes,
      limitReached: this.#limitReached,
      writeError: this.#error,
    };
  }

  onMessage(
    event: { side: TapSide; direction: 'in' | 'out'; channel: 'main' | 'twin'; header: MessageHeader; payload: Uint8Array; fds: readonly number[]; timeNs: bigint },
    ctx: MediatorSessionContext,
  ): void {
    if (this.#closed || this.#error) return;
    if (event.side === 'upstream' && !this.upstream) return;
    try {
      this.#record(event, ctx);
    } catch (error) {
      // A tap must not throw (the mediator would remove it): a message that cannot be encoded is left out, counted.
      this.#dropped.records++;
      this.#log.warn({ err: error, cmd: event.header.cmd }, 'recorder: a message could not be recorded; left out');
    }
  }

  #record(event: Parameters<MediatorTap['onMessage']>[0], ctx: MediatorSessionContext): void {
    const time = this.#time(event.timeNs);
    const files = this.#session(ctx, time);
    if (event.fds.length === 0) {
      this.#enqueue(encodeMessageRecord(ctx.id, time, event, NO_FDS), undefined);
      return;
    }
    const capture = this.#captureMemory > 0 && event.side === 'client' && event.direction === 'in';
    const metas: FdMeta[] = [];
    const contents: Uint8Array[] = [];
    event.fds.forEach((fd, i) => {
      const { meta, file } = describeFd(fd);
      const known = file !== '' && files.has(file);
      const ident = file === '' ? 0 : (files.get(file) ?? files.size + 1);
      if (file !== '' && !known) files.set(file, ident);
      const wanted = capture && !known && (meta.kind === 'memfd' || meta.kind === 'file') && meta.size <= this.#captureMemory;
      const before = contents.length;
      if (wanted) {
        try {
          for (const chunk of readContent(fd, meta.size)) contents.push(encodeContentRecord(ctx.id, time, i, chunk.at, chunk.data));
        } catch (error) {
          this.#log.warn({ err: error, fd: i }, 'recorder: the content of an fd could not be read; recorded without it');
          contents.length = before;
        }
      }
      metas.push({ ...meta, content: contents.length > before, ident });
    });
    this.#enqueue(encodeMessageRecord(ctx.id, time, event, metas), contents);
  }

  onSessionEnd(ctx: MediatorSessionContext, reason: string): void {
    if (this.#closed || this.#error || !this.#sessions.has(ctx.id)) return;
    this.#enqueue(encodeSessionEnd(ctx.id, this.#time(process.hrtime.bigint()), reason), undefined);
    this.#sessions.delete(ctx.id);
  }

  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#noteDrops(this.#time(process.hrtime.bigint()), true);
      clearTimeout(this.#timer);
      clearImmediate(this.#immediate);
      this.#timer = undefined;
      this.#immediate = undefined;
      this.#flush();
      await new Promise<void>((resolve) => (this.#queued + this.#writing === 0 || this.#error ? resolve() : this.#idle.push(resolve)));
      closeSync(this.#fd);
      if (this.#dropped.records > 0) this.#log.warn({ records: this.#dropped.records, bytes: this.#dropped.bytes }, 'recorder: records were dropped');
    }
    if (this.#error) throw this.#error;
  }

  /** Nanoseconds since the recorder started (the tap's times are process.hrtime.bigint()). */
  #time(timeNs: bigint): bigint {
    const t = timeNs - this.#startNs;
    return t < 0n ? 0n : t;
  }

  /** The session's file identities; its start record written the first time it is seen. */
  #session(ctx: MediatorSessionContext, time: bigint): Map<string, number> {
    let files = this.#sessions.get(ctx.id);
    if (files) return files;
    files = new Map();
    this.#sessions.set(ctx.id, files);
    this.#sessionCount++;
    this.#enqueue(encodeSessionStart(ctx.id, time, { client: ctx.client ?? null }), undefined);
    return files;
  }

  /** Queues a record and the content records that go with it whole, or drops them whole. */
  #enqueue(record: Uint8Array, contents: readonly Uint8Array[] | undefined): void {
    let size = record.length;
    if (contents) for (const c of contents) size += c.length;
    if (this.#limitReached || this.#bytes + size > this.#maxBytes - NOTE_ROOM) return this.#limit(size);
    if (this.#queued + this.#writing + size > this.#bufferBytes) {
      if (this.#dropped.pending === 0) this.#log.warn({ queued: this.#queued + this.#writing }, 'recorder: the disk is slower than the traffic; dropping records');
      this.#dropped.pending++;
      this.#dropped.pendingBytes += size;
      this.#dropped.records++;
      this.#dropped.bytes += size;
      return;
    }
    if (this.#dropped.pending > 0) this.#noteDrops(this.#time(process.hrtime.bigint()), false);
    this.#push(record);
    this.#records++;
    if (contents) {
      for (const c of contents) this.#push(c);
      this.#records += contents.length;
    }
    this.#schedule();
  }

  /** Queues bytes; records cut one after the other from one slab extend the open chunk (one writev entry). */
  #push(bytes: Uint8Array): void {
    const open = this.#open;
    if (open && open.buffer === bytes.buffer && open.byteOffset + this.#openLength === bytes.byteOffset) {
      this.#openLength += bytes.length;
    } else {
      this.#closeOpen();
      this.#open = bytes;
      this.#openLength = bytes.length;
    }
    this.#queued += bytes.length;
    this.#bytes += bytes.length;
  }

  #closeOpen(): void {
    if (!this.#open) return;
    this.#queue.push(this.#openLength === this.#open.length ? this.#open : new Uint8Array(this.#open.buffer, this.#open.byteOffset, this.#openLength));
    this.#open = undefined;
    this.#openLength = 0;
  }

  /**
   * Writes in batches: within {@link FLUSH_MS} of the first queued record, or
   * at the next turn once {@link FLUSH_BYTES} are queued (a write per message
   * would cost the relay a thread-pool round trip each).
   */
  #schedule(): void {
    if (this.#queued >= FLUSH_BYTES) {
      if (this.#immediate) return;
      clearTimeout(this.#timer);
      this.#timer = undefined;
      this.#immediate = setImmediate(() => {
        this.#immediate = undefined;
        this.#flush();
      });
    } else if (!this.#timer && !this.#immediate) {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        this.#flush();
      }, FLUSH_MS);
    }
  }

  /** After a run of drops: a note saying how many records are missing there. */
  #noteDrops(time: bigint, closing: boolean): void {
    if (this.#dropped.pending === 0 || this.#limitReached) return;
    const note = { kind: 'dropped', records: this.#dropped.pending, bytes: this.#dropped.pendingBytes, reason: 'the disk was slower than the traffic' };
    if (!closing) this.#log.warn(note, 'recorder: records were dropped');
    this.#push(encodeNote(0, time, note));
    this.#dropped.pending = 0;
    this.#dropped.pendingBytes = 0;
  }

  #limit(size: number): void {
    this.#dropped.records++;
    this.#dropped.bytes += size;
    if (this.#limitReached) return;
    this.#limitReached = true;
    this.#log.warn({ maxBytes: this.#maxBytes }, 'recorder: the size limit is reached; recording stops');
    this.#push(encodeNote(0, this.#time(process.hrtime.bigint()), { kind: 'limit', maxBytes: this.#maxBytes, reason: 'the size limit was reached; nothing after this was recorded' }));
    this.#schedule();
  }

  /** Starts one writev of everything queued, unless one is under way. */
  #flush(): void {
    if (this.#writing > 0 || this.#queued === 0 || this.#error) return;
    this.#closeOpen();
    const chunks = this.#queue;
    const total = this.#queued;
    this.#queue = [];
    this.#queued = 0;
    this.#writing = total;
    writev(this.#fd, chunks, (error, written) => {
      this.#writing = 0;
      if (error) return this.#fail(error);
      if (written < total) this.#requeue(chunks, written);
      if (this.#queued > 0) return this.#closed ? this.#flush() : this.#schedule();
      for (const resolve of this.#idle.splice(0)) resolve();
    });
  }

  /** A short write: what was not written goes back to the front of the queue. */
  #requeue(chunks: Uint8Array[], written: number): void {
    const rest: Uint8Array[] = [];
    let skip = written;
    for (const c of chunks) {
      if (skip >= c.length) {
        skip -= c.length;
        continue;
      }
      rest.push(skip > 0 ? c.subarray(skip) : c);
      skip = 0;
    }
    this.#queue = [...rest, ...this.#queue];
    this.#queued += rest.reduce((n, c) => n + c.length, 0);
  }

  #fail(error: Error): void {
    this.#error = error;
    this.#log.error({ err: error }, 'recorder: writing the recording failed; recording stops');
    this.#queue = [];
    this.#queued = 0;
    this.#open = undefined;
    this.#openLength = 0;
    for (const resolve of this.#idle.splice(0)) resolve();
  }
}
