/**
 * A recording tap between a vfio-user client and our server: it listens on
 * its own socket path, connects to the server's for each client, and forwards
 * every message both ways unchanged (same header fields, same payload, the
 * same fds on the same message), writing down what went by. A hook may answer
 * a client command itself or forward it without its fds; by default the tap
 * is transparent.
 *
 * Used by the interop tests to see the exact wire exchange between
 * libvfio-user's `client` sample and our server, which neither side prints.
 */
import { HeaderFlags, UnixListener, closeFd, connectUnix } from '../../src/index.js';
import type { Message, MessageHeader, Transport } from '../../src/index.js';

/** One message that went through the tap. */
export interface TapRecord {
  /** `c2s`: client → server; `s2c`: server → client; `tap`: the tap's own answer to the client. */
  dir: 'c2s' | 's2c' | 'tap';
  header: MessageHeader;
  payload: Uint8Array;
  /** How many fds came with it. */
  fds: number;
  /** How many of those were forwarded. */
  forwardedFds: number;
}

/** What to do with a command from the client. */
export type TapAction =
  | { forward: true; dropFds?: boolean }
  | { reply: { payload?: Uint8Array; errorNo?: number } };

/** Options of {@link Tap.open}. */
export interface TapOptions {
  /** Socket path of the server. */
  upstream: string;
  /** Socket path the client connects to. */
  path: string;
  /** Decides for each client command (default: forward unchanged). */
  onClientCommand?: (m: Message) => TapAction;
}

const FORWARD: TapAction = { forward: true };

/** A listening tap. */
export class Tap {
  readonly records: TapRecord[] = [];
  readonly #listener: UnixListener;
  readonly #options: TapOptions;
  readonly #open = new Set<Transport>();
  /** Errors while forwarding (there should be none). */
  readonly errors: unknown[] = [];

  private constructor(options: TapOptions) {
    this.#options = options;
    this.#listener = UnixListener.listen(options.path, {}, (client) => void this.#connect(client));
  }

  /** Starts listening on `options.path`. */
  static open(options: TapOptions): Tap {
    return new Tap(options);
  }

  /** Records in one direction, optionally of one command. */
  select(dir: TapRecord['dir'], cmd?: number): TapRecord[] {
    return this.records.filter((r) => r.dir === dir && (cmd === undefined || r.header.cmd === cmd));
  }

  /** Stops listening and closes both ends of every connection. */
  close(): void {
    this.#listener.close();
    for (const t of this.#open) t.close();
  }

  async #connect(client: Transport): Promise<void> {
    let server: Transport;
    try {
      server = await connectUnix(this.#options.upstream);
    } catch (e) {
      this.errors.push(e);
      client.close();
      return;
    }
    this.#open.add(client).add(server);
    const closeBoth = (): void => {
      this.#open.delete(client);
      this.#open.delete(server);
      client.close();
      server.close();
    };
    server.start({
      onMessage: (m) => this.#pass('s2c', m, client, false),
      onClose: closeBoth,
    });
    client.start({
      onMessage: (m) => {
        const isCommand = (m.header.flags & HeaderFlags.TYPE_MASK) === HeaderFlags.TYPE_COMMAND;
        const action = isCommand ? (this.#options.onClientCommand?.(m) ?? FORWARD) : FORWARD;
        if ('reply' in action) return this.#answer(m, client, action.reply);
        this.#pass('c2s', m, server, action.dropFds === true);
      },
      onClose: closeBoth,
    });
  }

  /** Forwards `m` to `to` with its fds (unless dropped), then closes our copies. */
  #pass(dir: 'c2s' | 's2c', m: Message, to: Transport, dropFds: boolean): void {
    const fds = m.fds.takeAll();
    const forwarded = dropFds ? [] : fds;
    this.records.push({ dir, header: m.header, payload: m.payload, fds: fds.length, forwardedFds: forwarded.length });
    try {
      if (!to.closed) to.send({ msgId: m.header.msgId, cmd: m.header.cmd, flags: m.header.flags, errorNo: m.header.errorNo }, m.payload, forwarded);
    } catch (e) {
      this.errors.push(e);
    } finally {
      for (const fd of fds) closeFd(fd);
    }
  }

  /** The tap answers a client command itself. */
  #answer(m: Message, client: Transport, reply: { payload?: Uint8Array; errorNo?: number }): void {
    const fds = m.fds.takeAll();
    for (const fd of fds) closeFd(fd);
    this.records.push({ dir: 'c2s', header: m.header, payload: m.payload, fds: fds.length, forwardedFds: 0 });
    const flags = HeaderFlags.TYPE_REPLY | (reply.errorNo ? HeaderFlags.ERROR : 0);
    const header = { msgId: m.header.msgId, cmd: m.header.cmd, flags, errorNo: reply.errorNo ?? 0 };
    const payload = reply.payload ?? new Uint8Array(0);
    this.records.push({ dir: 'tap', header: { ...header, msgSize: 16 + payload.length }, payload, fds: 0, forwardedFds: 0 });
    client.send(header, payload);
  }
}
