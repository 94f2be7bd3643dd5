/**
 * The transport seam: framing plus fd passing behind one interface, so the
 * server and client never touch sockets. Implementations: a UNIX stream socket
 * (`unix-socket.ts`, the only native boundary) and an in-memory pair for tests.
 */
import type { MessageHeader } from '../protocol/header.js';
import type { ReceivedFds } from './fds.js';
import type { FramingError } from './framer.js';

/** One complete message as received. */
export interface Message {
  /** The decoded 16-byte header; `cmd` and `flags` are raw numbers. */
  readonly header: MessageHeader;
  /** `msg_size - 16` bytes. A view that stays valid (the buffer is never reused). */
  readonly payload: Uint8Array;
  /** Fds that arrived with this message's header. Unclaimed ones must be closed. */
  readonly fds: ReceivedFds;
}

/** Header fields chosen by the sender; `msg_size` is computed from the payload. */
export interface OutgoingHeader {
  msgId: number;
  cmd: number;
  flags: number;
  errorNo?: number;
}

/** Callbacks through which a transport delivers what it reads. */
export interface TransportHandler {
  /** A complete message. Called in arrival order. */
  onMessage(message: Message): void;
  /**
   * The input can no longer be trusted (bad header, lost fds). Reading has
   * stopped, the transport is still writable so a last error reply can be sent,
   * and the owner must call `close()`. Without this callback the transport
   * closes itself and reports the error through {@link onClose}.
   */
  onStreamError?(error: FramingError): void;
  /** Writes queued by back-pressure have all been flushed. */
  onDrain?(): void;
  /**
   * The transport is closed: `error` is undefined for an orderly EOF or a local
   * `close()`, otherwise the reason. Called exactly once.
   */
  onClose(error?: Error): void;
}

/** Credentials of the process at the other end of a socket. */
export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

/** A framed, fd-passing, message transport. */
export interface Transport {
  /** Starts delivering to `handler`. Call once. */
  start(handler: TransportHandler): void;
  /**
   * Sends one message (header + payload + fds) as one unit: on a socket, one
   * `sendmsg` with the fds attached to its first byte (replies produced while a
   * batch of received messages is delivered may share one `sendmsg`). Never
   * takes ownership of `fds`: they may be closed as soon as `send` returns. The
   * payload is not copied: do not modify it after `send`.
   * @returns false when the message had to be queued (back-pressure): wait for
   *   `onDrain` before sending more bulk data.
   * @throws {ConnectionClosedError} ENOTCONN if the transport is closed.
   * @throws {InvalidArgumentError} EMSGSIZE if the message exceeds 4 GiB - 1.
   */
  send(header: OutgoingHeader, payload?: Uint8Array | readonly Uint8Array[], fds?: readonly number[]): boolean;
  /** Stops reading (messages already read are still delivered). */
  pause(): void;
  /** Resumes reading after {@link pause}. */
  resume(): void;
  /** Closes now; queued writes are dropped. Idempotent. */
  close(): void;
  /** Whether `close()` ran or the peer went away. */
  readonly closed: boolean;
  /** Bytes queued by back-pressure and not yet written. */
  readonly pendingWriteBytes: number;
  /** Credentials of the peer, where the transport can know them. */
  peerCredentials(): PeerCredentials | undefined;
}
