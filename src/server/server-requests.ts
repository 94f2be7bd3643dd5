/**
 * Commands the server sends to its client — DMA_READ and DMA_WRITE for
 * message-mode DMA regions — with their own 16-bit message ids (wrapping,
 * never reusing one in flight), a reply timeout, and chunking to the client's
 * `max_data_xfer_size`, in the layout of the client's profile (client-profile.ts). They go out on the twin socket when one was
 * negotiated, else on the main socket.
 */
import { ConnectionClosedError, ProtocolError, RemoteError, TimeoutError } from '../errors.js';
import { Command, DEFAULT_MAX_DATA_XFER_SIZE, HeaderFlags } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import { isError, replyErrno } from '../protocol/header.js';
import { decodeDmaReadReply, decodeDmaWriteReply, encodeDmaAccess, encodeDmaAccessWithData, type DmaLayout } from '../protocol/dma.js';
import type { ClientProfile } from './client-profile.js';
import type { ResolvedCapabilities } from '../protocol/capabilities.js';
import type { Message, Transport } from '../transport/transport.js';
import type { DmaMessageTransport } from '../device/dma.js';

interface Pending {
  cmd: number;
  resolve: (m: Message) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/** Outstanding server→client requests of one session. */
export class ServerRequests {
  #channel: Transport;
  readonly #timeoutMs: number;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #closedWith: Error | undefined;

  constructor(mainTransport: Transport, timeoutMs: number) {
    this.#channel = mainTransport;
    this.#timeoutMs = timeoutMs;
  }

  /** Sends later requests on `transport` (the twin socket). */
  useChannel(transport: Transport): void {
    this.#channel = transport;
  }

  /**
   * A DMA transport chunking to the client's `max_data_xfer_size` (and its
   * profile's limit), in the message layout its profile says.
   */
  dmaTransport(peer: () => { client: ResolvedCapabilities; profile: ClientProfile } | undefined): DmaMessageTransport {
    const chunk = (): number => Math.max(1, Math.min(peer()?.client.maxDataXferSize ?? DEFAULT_MAX_DATA_XFER_SIZE, peer()?.profile.dmaChunkLimit ?? Infinity));
    const layout = (): DmaLayout => peer()?.profile.dmaLayout ?? 'vfio-user';
    return {
      read: async (addr, count) => {
        const out = new Uint8Array(count);
        for (let done = 0; done < count; ) {
          const n = Math.min(chunk(), count - done);
          const at = addr + BigInt(done);
          const reply = await this.request(Command.DMA_READ, encodeDmaAccess({ addr: at, count: BigInt(n) }));
          const body = decodeDmaReadReply(reply.payload, layout());
          if (body.addr !== at || body.count !== BigInt(n)) throw new ProtocolError(`DMA_READ reply for 0x${at.toString(16)}+${n} describes 0x${body.addr.toString(16)}+${body.count}`);
          out.set(body.data, done);
          done += n;
        }
        return out;
      },
      write: async (addr, data) => {
        for (let done = 0; done < data.length; ) {
          const n = Math.min(chunk(), data.length - done);
          const at = addr + BigInt(done);
          const reply = await this.request(Command.DMA_WRITE, encodeDmaAccessWithData({ addr: at, count: BigInt(n), data: data.subarray(done, done + n) }, layout()));
          const body = decodeDmaWriteReply(reply.payload);
          if (body && (body.addr !== at || body.count !== BigInt(n))) throw new ProtocolError(`DMA_WRITE reply for 0x${at.toString(16)}+${n} does not echo it`);
          done += n;
        }
      },
    };
  }

  /**
   * Sends one command and resolves with its reply.
   * @throws {RemoteError} the client's errno when it answers with an error.
   * @throws {TimeoutError} ETIMEDOUT when no reply comes in time.
   * @throws {ConnectionClosedError} ENOTCONN when the session ends first.
   */
  request(cmd: number, payload: Uint8Array): Promise<Message> {
    if (this.#closedWith) return Promise.reject(this.#closedWith);
    const msgId = this.#allocateId();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(msgId);
        reject(new TimeoutError(`client did not answer command ${cmd} (msg ${msgId}) within ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      this.#pending.set(msgId, { cmd, resolve, reject, timer });
      try {
        this.#channel.send({ msgId, cmd, flags: HeaderFlags.TYPE_COMMAND }, payload);
      } catch (error) {
        clearTimeout(timer);
        this.#pending.delete(msgId);
        reject(error as Error);
      }
    });
  }

  /** Routes a reply from the client to the request waiting for it; strays are dropped. */
  settle(m: Message, where: string): void {
    m.fds.closeRemaining();
    const p = this.#pending.get(m.header.msgId);
    if (!p || p.cmd !== m.header.cmd) return; // a stray or late reply: nothing waits for it
    this.#pending.delete(m.header.msgId);
    clearTimeout(p.timer);
    if (isError(m.header)) p.reject(new RemoteError(`client failed command ${p.cmd} (${where})`, p.cmd, replyErrno(m.header)));
    else p.resolve(m);
  }

  /** Rejects everything outstanding; later requests fail at once. */
  close(reason: Error): void {
    this.#closedWith = reason;
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(reason);
    }
    this.#pending.clear();
  }

  #allocateId(): number {
    for (let i = 0; i < 0x10000; i++) {
      const id = this.#nextId;
      this.#nextId = (this.#nextId + 1) & 0xffff;
      if (!this.#pending.has(id)) return id;
    }
    throw new ConnectionClosedError('65536 server requests in flight', { errno: Errno.EBUSY });
  }
}
