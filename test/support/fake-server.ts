/**
 * A scriptable fake vfio-user server for client tests. It listens on a
 * temporary socket, answers VERSION properly (unless told otherwise), and
 * hands every later request to a test-provided responder that may send any
 * raw bytes and fds back, including malformed ones. Replies are built with the
 * independent {@link buildMessage}, never with the codec under test, and go
 * out through a raw `sendmsg` so a lying `msg_size` reaches the client as is.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../src/native/addon.js';
import { UnixListener } from '../../src/transport/unix-listener.js';
import type { UnixSocketTransport } from '../../src/transport/unix-socket.js';
import type { Message } from '../../src/transport/transport.js';
import { buildMessage, wb } from './wire-builder.js';

/** Header numbers used by the fake, spelled out here (not taken from src/protocol). */
export const Wire = {
  VERSION: 1,
  DEVICE_GET_INFO: 4,
  DMA_READ: 11,
  DMA_WRITE: 12,
  REPLY: 0x1,
  NO_REPLY: 0x10,
  ERROR: 0x20,
} as const;

/** The JSON a well-behaved fake advertises. */
export const FAKE_CAPS_JSON = '{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576}}';

/** A VERSION payload: `u16 major, u16 minor, JSON\0` (no JSON when `json` is null). */
export function versionPayload(major = 0, minor = 2, json: string | null = FAKE_CAPS_JSON): Uint8Array {
  const b = wb().u16(major).u16(minor);
  if (json !== null) b.cstr(json);
  return b.build();
}

/** A DEVICE_GET_INFO reply payload: argsz 16, flags PCI|RESET, 9 regions, 5 IRQs. */
export function deviceInfoPayload(): Uint8Array {
  return wb().u32(16).u32(3).u32(9).u32(5).build();
}

/** Answers one request from the client; may send anything (or nothing) through `conn`. */
export type Responder = (request: Message, conn: FakeConnection) => void | Promise<void>;

/** One accepted client connection. */
export class FakeConnection {
  readonly transport: UnixSocketTransport;
  /** Every command the client sent (VERSION included), in order; fds already closed. */
  readonly requests: Message[] = [];
  /** Replies the client sent to our own commands (DMA_READ/DMA_WRITE, …). */
  readonly replies: Message[] = [];
  readonly closed: Promise<Error | undefined>;
  readonly #server: FakeServer;
  readonly #waiting = new Map<number, (m: Message) => void>();
  #requestWaiters: { n: number; resolve: (m: Message) => void }[] = [];
  #nextId = 0x8000;

  constructor(server: FakeServer, transport: UnixSocketTransport) {
    this.#server = server;
    this.transport = transport;
    let resolveClosed!: (e: Error | undefined) => void;
    this.closed = new Promise((r) => (resolveClosed = r));
    transport.start({
      onMessage: (m) => this.#onMessage(m),
      onClose: (e) => resolveClosed(e),
    });
  }

  /** Sends raw bytes (with `fds` on the first byte) in one `sendmsg`; asserts all of it went out. */
  sendRaw(bytes: Uint8Array, fds: readonly number[] = []): void {
    if (this.transport.closed) return;
    const sent = native.sendmsg(this.transport.fd, [bytes], fds.length > 0 ? fds : null);
    assert.equal(sent, bytes.length, `fake server: sendmsg sent ${sent} of ${bytes.length} bytes`);
  }

  /** A success reply to `request` (same msg_id and cmd unless overridden). */
  reply(request: Message, payload: Uint8Array = new Uint8Array(0), options: { msgId?: number; cmd?: number; flags?: number; fds?: readonly number[] } = {}): void {
    const header = { msgId: options.msgId ?? request.header.msgId, cmd: options.cmd ?? request.header.cmd, flags: options.flags ?? Wire.REPLY };
    this.sendRaw(buildMessage(header, payload), options.fds);
  }

  /** An error reply (REPLY|ERROR with `errno`), optionally with a payload. */
  errorReply(request: Message, errno: number, payload: Uint8Array = new Uint8Array(0)): void {
    this.sendRaw(buildMessage({ msgId: request.header.msgId, cmd: request.header.cmd, flags: Wire.REPLY | Wire.ERROR, errorNo: errno }, payload));
  }

  /** Sends a server→client command and resolves with the client's reply. */
  command(cmd: number, payload: Uint8Array, flags = 0): Promise<Message> {
    const msgId = this.#nextId++ & 0xffff;
    const reply = new Promise<Message>((resolve) => this.#waiting.set(msgId, resolve));
    this.sendRaw(buildMessage({ msgId, cmd, flags }, payload));
    return reply;
  }

  /** Resolves with the n-th request (0 = VERSION) once it has arrived. */
  request(n: number): Promise<Message> {
    const seen = this.requests[n];
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => this.#requestWaiters.push({ n, resolve }));
  }

  /** Closes the connection (EOF for the client). */
  close(): void {
    this.transport.close();
  }

  #onMessage(m: Message): void {
    m.fds.closeRemaining();
    if ((m.header.flags & 0xf) === Wire.REPLY) {
      this.replies.push(m);
      const waiter = this.#waiting.get(m.header.msgId);
      this.#waiting.delete(m.header.msgId);
      waiter?.(m);
      return;
    }
    this.requests.push(m);
    const n = this.requests.length - 1;
    const ready = this.#requestWaiters.filter((w) => w.n === n);
    this.#requestWaiters = this.#requestWaiters.filter((w) => w.n !== n);
    for (const w of ready) w.resolve(m);
    const respond = n === 0 && m.header.cmd === Wire.VERSION ? this.#server.onVersion : this.#server.responder;
    void Promise.resolve(respond(m, this)).catch((error: unknown) => this.#server.errors.push(error));
  }
}

/** Options of {@link FakeServer.start}. */
export interface FakeServerOptions {
  /** Answers VERSION (default: a proper 0.2 reply with {@link FAKE_CAPS_JSON}). */
  onVersion?: Responder;
  /** Answers every later request (default: DEVICE_GET_INFO answered properly, anything else ignored). */
  responder?: Responder;
  /** Largest msg_size the fake accepts from the client. */
  maxMessageSize?: number;
}

/** The default VERSION answer: major 0, minor 2, {@link FAKE_CAPS_JSON}. */
export const answerVersion: Responder = (m, conn) => conn.reply(m, versionPayload());

/** The default responder: DEVICE_GET_INFO gets a proper reply, everything else no answer. */
export const answerDeviceInfo: Responder = (m, conn) => {
  if (m.header.cmd === Wire.DEVICE_GET_INFO) conn.reply(m, deviceInfoPayload());
};

/** A listening fake server on a fresh temporary socket path. */
export class FakeServer {
  readonly path: string;
  readonly connections: FakeConnection[] = [];
  /** Exceptions thrown by responders (a test can assert there were none). */
  readonly errors: unknown[] = [];
  onVersion: Responder;
  responder: Responder;
  readonly #dir: string;
  readonly #listener: UnixListener;
  #connectionWaiters: ((c: FakeConnection) => void)[] = [];

  private constructor(options: FakeServerOptions) {
    this.#dir = mkdtempSync(join(tmpdir(), 'vfio-user-fake-'));
    this.path = join(this.#dir, 'fake.sock');
    this.onVersion = options.onVersion ?? answerVersion;
    this.responder = options.responder ?? answerDeviceInfo;
    const transport = options.maxMessageSize === undefined ? {} : { maxMessageSize: options.maxMessageSize };
    this.#listener = UnixListener.listen(this.path, { transport }, (t) => {
      const conn = new FakeConnection(this, t);
      this.connections.push(conn);
      for (const w of this.#connectionWaiters.splice(0)) w(conn);
    });
  }

  /** Starts listening. */
  static start(options: FakeServerOptions = {}): FakeServer {
    return new FakeServer(options);
  }

  /** Resolves with the first (or latest, once one exists) accepted connection. */
  connection(): Promise<FakeConnection> {
    const last = this.connections[this.connections.length - 1];
    if (last) return Promise.resolve(last);
    return new Promise((resolve) => this.#connectionWaiters.push(resolve));
  }

  /** Closes every connection and the listener, and removes the socket directory. Idempotent. */
  async close(): Promise<void> {
    this.#listener.close();
    for (const c of this.connections) c.close();
    await Promise.all(this.connections.map((c) => c.closed));
    rmSync(this.#dir, { recursive: true, force: true });
  }
}
