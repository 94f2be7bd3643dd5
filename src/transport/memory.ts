/**
 * An in-process transport pair for tests. Each message is serialised to bytes
 * exactly as a socket would carry it and fed to the peer's {@link Framer},
 * optionally cut into small chunks, so framing and fd ownership are exercised
 * the same way as on a real socket. Delivery is asynchronous (a macrotask).
 */
import { ConnectionClosedError, InvalidArgumentError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { SERVER_MAX_MSG_SIZE } from '../protocol/constants.js';
import { Framer } from './framer.js';
import { concatChunks, frameOutgoing } from './outgoing.js';
import type { FdCloser } from './fds.js';
import type { OutgoingHeader, PeerCredentials, Transport, TransportHandler } from './transport.js';

/** Options for {@link createMemoryTransportPair}. */
export interface MemoryTransportOptions {
  /** Deliver each message in chunks of at most this many bytes (default: whole). */
  chunkSize?: number;
  /** Largest `msg_size` each side accepts (default 1,048,608). */
  maxMessageSize?: number;
  /** Duplicates an fd handed to `send` (default: identity, for fake fd numbers). */
  dupFd?: (fd: number) => number;
  /** Closes an fd nobody claimed (default: no-op, for fake fd numbers). */
  closeFd?: FdCloser;
}

interface Chunk {
  bytes: Uint8Array;
  fds: number[];
}

class MemoryTransport implements Transport {
  peer: MemoryTransport | undefined;
  readonly #options: MemoryTransportOptions;
  readonly #framer: Framer;
  #handler: TransportHandler | undefined;
  #inbox: Chunk[] = [];
  #scheduled = false;
  #paused = false;
  #reading = true;
  #closed = false;

  constructor(options: MemoryTransportOptions) {
    this.#options = options;
    this.#framer = new Framer({
      maxMessageSize: options.maxMessageSize ?? SERVER_MAX_MSG_SIZE,
      closeFd: (fd) => this.#close(fd),
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  get pendingWriteBytes(): number {
    return 0;
  }

  start(handler: TransportHandler): void {
    if (this.#handler) throw new InvalidArgumentError('transport already started');
    this.#handler = handler;
    this.#schedule();
  }

  peerCredentials(): PeerCredentials {
    return { pid: process.pid, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  }

  send(header: OutgoingHeader, payload?: Uint8Array | readonly Uint8Array[], fds?: readonly number[]): boolean {
    if (this.#closed) throw new ConnectionClosedError(`send of cmd ${header.cmd}: transport is closed`);
    const bytes = concatChunks(frameOutgoing(header, payload));
    const peer = this.peer;
    if (!peer || peer.#closed) return true; // the bytes fall on the floor, as on a socket
    const dup = this.#options.dupFd ?? ((fd: number) => fd);
    const copies = (fds ?? []).map(dup);
    const size = this.#options.chunkSize ?? bytes.length;
    for (let off = 0; off < bytes.length; off += size) {
      peer.#inbox.push({ bytes: bytes.subarray(off, off + size), fds: off === 0 ? copies : [] });
    }
    peer.#schedule();
    return true;
  }

  /** Injects raw bytes (and fds) as if the peer had written them. For hostile-input tests. */
  injectRaw(bytes: Uint8Array, fds: number[] = []): void {
    this.#inbox.push({ bytes, fds });
    this.#schedule();
  }

  /** Simulates the peer closing its end: EOF after everything queued. */
  injectEof(): void {
    this.#inbox.push({ bytes: new Uint8Array(0), fds: [] });
    this.#schedule();
  }

  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    this.#schedule();
  }

  close(): void {
    this.#shutdown(undefined);
  }

  #schedule(): void {
    if (this.#scheduled || !this.#handler) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#drain();
    });
  }

  #drain(): void {
    while (this.#inbox.length > 0 && !this.#closed && !this.#paused && this.#reading) {
      const chunk = this.#inbox.shift() as Chunk;
      if (chunk.bytes.length === 0) {
        for (const fd of chunk.fds) this.#close(fd);
        const error = this.#framer.midMessage
          ? new ConnectionClosedError('peer closed the connection in the middle of a message', { errno: Errno.ECONNRESET })
          : undefined;
        return this.#shutdown(error);
      }
      const { messages, error } = this.#framer.push(chunk.bytes, chunk.fds);
      for (const m of messages) {
        if (this.#closed) m.fds.closeRemaining();
        else this.#handler?.onMessage(m);
      }
      if (error && !this.#closed) {
        this.#reading = false;
        if (this.#handler?.onStreamError) this.#handler.onStreamError(error);
        else this.#shutdown(error);
      }
    }
  }

  #shutdown(error: Error | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#framer.dispose();
    for (const chunk of this.#inbox) for (const fd of chunk.fds) this.#close(fd);
    this.#inbox = [];
    const peer = this.peer;
    if (peer && !peer.#closed) peer.injectEof();
    this.#handler?.onClose(error);
  }

  #close(fd: number): void {
    this.#options.closeFd?.(fd);
  }
}

/** One end of an in-memory pair, with hooks to inject raw bytes and EOF. */
export type MemoryTransportEnd = Transport & {
  injectRaw(bytes: Uint8Array, fds?: number[]): void;
  injectEof(): void;
};

/**
 * Two connected in-memory transports: what one sends, the other receives.
 * @param options - chunking, size limit and fd hooks, applied to both ends.
 */
export function createMemoryTransportPair(options: MemoryTransportOptions = {}): [MemoryTransportEnd, MemoryTransportEnd] {
  const a = new MemoryTransport(options);
  const b = new MemoryTransport(options);
  a.peer = b;
  b.peer = a;
  return [a, b];
}

