/**
 * A step-by-step vfio-user client for server tests: every request is sent by
 * hand and every reply returned raw, so tests can assert exact bytes, errnos
 * and fds. Server→client DMA requests are answered by an optional handler.
 */
import assert from 'node:assert/strict';
import { connectUnix } from '../../src/transport/unix-listener.js';
import { UnixSocketTransport } from '../../src/transport/unix-socket.js';
import type { Message } from '../../src/transport/transport.js';
import { Command, HeaderFlags } from '../../src/protocol/constants.js';
import { VERSION_REQUEST_PAD, decodeVersion, encodeVersion } from '../../src/protocol/version.js';
import type { Capabilities } from '../../src/protocol/capabilities.js';
import type { Version } from '../../src/protocol/version.js';

/** Answers a server→client command (DMA_READ/DMA_WRITE); returns the reply payload or an errno. */
export type ServerCommandHandler = (m: Message) => Uint8Array | { errno: number } | undefined;

/** A raw reply. */
export interface Reply {
  msgId: number;
  cmd: number;
  flags: number;
  errorNo: number;
  payload: Uint8Array;
  fds: number[];
}

export class StepClient {
  readonly transport: UnixSocketTransport;
  readonly #waiting = new Map<number, (r: Reply) => void>();
  readonly replies: Reply[] = [];
  readonly serverCommands: Message[] = [];
  onServerCommand: ServerCommandHandler | undefined;
  #nextId = 1;
  #twin: UnixSocketTransport | undefined;
  closed: Promise<Error | undefined>;

  private constructor(transport: UnixSocketTransport) {
    this.transport = transport;
    let resolveClosed!: (e: Error | undefined) => void;
    this.closed = new Promise((r) => (resolveClosed = r));
    transport.start({
      onMessage: (m) => this.#onMessage(m, transport),
      onClose: (e) => resolveClosed(e),
    });
  }

  /** Connects (no VERSION sent yet). */
  static async connect(path: string): Promise<StepClient> {
    return new StepClient(await connectUnix(path));
  }

  /** Connects and negotiates VERSION 0.2 with `caps`, leaving room for the whole reply (VERSION_REQUEST_PAD). */
  static async open(path: string, caps: Capabilities = { maxMsgFds: 8 }): Promise<{ client: StepClient; version: Version }> {
    const client = await StepClient.connect(path);
    const reply = await client.request(Command.VERSION, encodeVersion({ major: 0, minor: 2, capabilities: caps }, VERSION_REQUEST_PAD));
    assert.equal(reply.flags & HeaderFlags.ERROR, 0, `VERSION failed with errno ${reply.errorNo}`);
    const version = decodeVersion(reply.payload);
    if (reply.fds.length > 0) client.#useTwin(reply.fds[0]!);
    return { client, version };
  }

  /** Sends one command and resolves with its reply. */
  request(cmd: number, payload?: Uint8Array, fds?: number[], flags = 0): Promise<Reply> {
    const msgId = this.#nextId++ & 0xffff;
    const p = new Promise<Reply>((resolve) => this.#waiting.set(msgId, resolve));
    this.transport.send({ msgId, cmd, flags }, payload, fds);
    return p;
  }

  /** Sends one command and asserts it succeeded. */
  async ok(cmd: number, payload?: Uint8Array, fds?: number[]): Promise<Reply> {
    const r = await this.request(cmd, payload, fds);
    assert.equal(r.flags & HeaderFlags.ERROR, 0, `command ${cmd} failed with errno ${r.errorNo}`);
    return r;
  }

  /** Sends one command and asserts it failed with `errno`. */
  async fails(cmd: number, payload: Uint8Array | undefined, errno: number, fds?: number[]): Promise<Reply> {
    const r = await this.request(cmd, payload, fds);
    assert.equal(r.flags & HeaderFlags.ERROR, HeaderFlags.ERROR, `command ${cmd} should have failed with errno ${errno}`);
    assert.equal(r.errorNo, errno, `command ${cmd}: errno`);
    return r;
  }

  /** Sends one message without waiting for anything (e.g. NO_REPLY). */
  post(cmd: number, payload?: Uint8Array, flags = 0, fds?: number[]): number {
    const msgId = this.#nextId++ & 0xffff;
    this.transport.send({ msgId, cmd, flags }, payload, fds);
    return msgId;
  }

  /** Resolves with the reply to `msgId` (for requests sent with {@link post}). */
  replyTo(msgId: number): Promise<Reply> {
    const done = this.replies.find((r) => r.msgId === msgId);
    if (done) return Promise.resolve(done);
    return new Promise((resolve) => this.#waiting.set(msgId, resolve));
  }

  close(): void {
    this.#twin?.close();
    this.transport.close();
  }

  #useTwin(fd: number): void {
    this.#twin = new UnixSocketTransport(fd);
    const twin = this.#twin;
    twin.start({ onMessage: (m) => this.#onMessage(m, twin), onClose: () => {} });
  }

  #onMessage(m: Message, via: UnixSocketTransport): void {
    if ((m.header.flags & HeaderFlags.TYPE_MASK) === HeaderFlags.TYPE_COMMAND) return this.#answerServer(m, via);
    const reply: Reply = { ...m.header, payload: m.payload, fds: m.fds.takeAll() };
    this.replies.push(reply);
    const waiter = this.#waiting.get(m.header.msgId);
    this.#waiting.delete(m.header.msgId);
    waiter?.(reply);
  }

  #answerServer(m: Message, via: UnixSocketTransport): void {
    m.fds.closeRemaining();
    this.serverCommands.push(m);
    const answer = this.onServerCommand?.(m);
    if (answer === undefined) return; // no answer: lets tests make the server wait
    const base = { msgId: m.header.msgId, cmd: m.header.cmd };
    if (answer instanceof Uint8Array) via.send({ ...base, flags: HeaderFlags.TYPE_REPLY }, answer);
    else via.send({ ...base, flags: HeaderFlags.TYPE_REPLY | HeaderFlags.ERROR, errorNo: answer.errno });
  }
}
