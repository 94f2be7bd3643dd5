/**
 * A listening UNIX socket that QEMU connects to (as libqtest does: the test
 * listens, QEMU is the client of `-qtest unix:PATH` and of the QMP chardev),
 * and the accepted connection read as text lines.
 */
import { createServer, type Server, type Socket } from 'node:net';

/** One accepted connection, delivered line by line. */
export class LineSocket {
  readonly #socket: Socket;
  #buffer = '';
  #closed = false;
  readonly closed: Promise<void>;

  constructor(socket: Socket, onLine: (line: string) => void, onClose: () => void) {
    this.#socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.#buffer += chunk;
      for (let nl = this.#buffer.indexOf('\n'); nl >= 0; nl = this.#buffer.indexOf('\n')) {
        const line = this.#buffer.slice(0, nl);
        this.#buffer = this.#buffer.slice(nl + 1);
        onLine(line);
      }
    });
    // Errors (ECONNRESET when QEMU is killed) end the connection like EOF does.
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.#closed = true;
        onClose();
        resolve();
      }),
    );
  }

  /** Whether the peer went away (or {@link close} was called). */
  get isClosed(): boolean {
    return this.#closed;
  }

  /** Sends `text` as is; false if the connection is closed. */
  write(text: string): boolean {
    if (this.#closed) return false;
    this.#socket.write(text);
    return true;
  }

  /** Closes the connection. */
  close(): void {
    this.#socket.destroy();
  }
}

/** A listener for exactly one connection. */
export class OneShotListener {
  readonly path: string;
  readonly #server: Server;
  readonly accepted: Promise<Socket>;

  private constructor(path: string, server: Server, accepted: Promise<Socket>) {
    this.path = path;
    this.#server = server;
    this.accepted = accepted;
  }

  /** Listens on `path`; resolves once listening. */
  static async listen(path: string): Promise<OneShotListener> {
    let resolveAccepted!: (s: Socket) => void;
    const accepted = new Promise<Socket>((resolve) => (resolveAccepted = resolve));
    const server = createServer((socket) => {
      resolveAccepted(socket);
      server.close();
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
    return new OneShotListener(path, server, accepted);
  }

  /** Stops listening (the accepted connection, if any, stays open). */
  close(): void {
    this.#server.close();
  }
}
