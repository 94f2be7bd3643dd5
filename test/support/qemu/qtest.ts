/**
 * A client of QEMU's qtest protocol (`-accel qtest -qtest unix:PATH`; QEMU's
 * tests/qtest/libqtest.c speaks the same): one text command per line, answered
 * in order by `OK [values]` or `FAIL reason`/`ERR reason`, with asynchronous
 * `IRQ raise N` / `IRQ lower N` lines in between once `irq_intercept_in` (or
 * `_out`) named a device whose GPIO lines to watch.
 *
 * The guest has no CPU running: every access below is what a guest driver's
 * load or store would do, performed by QEMU on the guest's address spaces
 * (memory, I/O ports), so a BAR access goes through QEMU's vfio-user-pci.
 */
import type { Socket } from 'node:net';
import { LineSocket } from './line-socket.js';

/** One IRQ line change QEMU reported. */
export interface IrqEvent {
  line: number;
  level: boolean;
}

interface Pending {
  command: string;
  resolve: (words: string[]) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/** Default time a command may take before it fails (QEMU's own vfio-user timeout is 5 s). */
const COMMAND_TIMEOUT_MS = 15_000;

/** The qtest connection to one QEMU. */
export class QtestClient {
  readonly #socket: LineSocket;
  readonly #pending: Pending[] = [];
  /** Every IRQ change QEMU reported, in order. */
  readonly irqEvents: IrqEvent[] = [];
  readonly #levels = new Map<number, boolean>();
  #irqWaiters: { match: (e: IrqEvent) => boolean; resolve: () => void }[] = [];
  #gone: Error | undefined;

  /** Speaks qtest over `socket`, the connection QEMU made to the test's listener. */
  constructor(socket: Socket) {
    this.#socket = new LineSocket(
      socket,
      (line) => this.#onLine(line),
      () => this.#onClose(),
    );
  }

  /** Sends one raw command line; resolves with the words after `OK`. */
  command(line: string, timeoutMs = COMMAND_TIMEOUT_MS): Promise<string[]> {
    if (this.#gone) return Promise.reject(this.#gone);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.#pending.findIndex((p) => p.timer === timer);
        // A timed-out command leaves the stream out of step: nothing after it can be trusted.
        if (i >= 0) this.#fail(new Error(`qtest: '${line}' got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.push({ command: line, resolve, reject, timer });
      this.#socket.write(`${line}\n`);
    });
  }

  async #value(line: string): Promise<bigint> {
    const [v] = await this.command(line);
    if (v === undefined) throw new Error(`qtest: '${line}' answered OK without a value`);
    return BigInt(v);
  }

  readb = async (addr: bigint | number): Promise<number> => Number(await this.#value(`readb ${hex(addr)}`));
  readw = async (addr: bigint | number): Promise<number> => Number(await this.#value(`readw ${hex(addr)}`));
  readl = async (addr: bigint | number): Promise<number> => Number(await this.#value(`readl ${hex(addr)}`));
  readq = (addr: bigint | number): Promise<bigint> => this.#value(`readq ${hex(addr)}`);
  writeb = async (addr: bigint | number, v: number): Promise<void> => void (await this.command(`writeb ${hex(addr)} ${hex(v)}`));
  writew = async (addr: bigint | number, v: number): Promise<void> => void (await this.command(`writew ${hex(addr)} ${hex(v)}`));
  writel = async (addr: bigint | number, v: number): Promise<void> => void (await this.command(`writel ${hex(addr)} ${hex(v >>> 0)}`));
  writeq = async (addr: bigint | number, v: bigint): Promise<void> => void (await this.command(`writeq ${hex(addr)} ${hex(v)}`));
  inb = async (port: number): Promise<number> => Number(await this.#value(`inb ${hex(port)}`));
  inw = async (port: number): Promise<number> => Number(await this.#value(`inw ${hex(port)}`));
  inl = async (port: number): Promise<number> => Number(await this.#value(`inl ${hex(port)}`));
  outb = async (port: number, v: number): Promise<void> => void (await this.command(`outb ${hex(port)} ${hex(v)}`));
  outw = async (port: number, v: number): Promise<void> => void (await this.command(`outw ${hex(port)} ${hex(v)}`));
  outl = async (port: number, v: number): Promise<void> => void (await this.command(`outl ${hex(port)} ${hex(v >>> 0)}`));

  /** Reads `size` bytes of guest memory (`read ADDR SIZE`, hex encoded both ways). */
  async memread(addr: bigint | number, size: number): Promise<Uint8Array> {
    const [data] = await this.command(`read ${hex(addr)} ${hex(size)}`);
    if (data === undefined || !data.startsWith('0x') || data.length !== 2 + 2 * size) {
      throw new Error(`qtest: read of ${size} bytes answered '${String(data).slice(0, 40)}'`);
    }
    return Uint8Array.from(Buffer.from(data.slice(2), 'hex'));
  }

  /** Writes `data` to guest memory (`write ADDR SIZE 0xHEX`). */
  async memwrite(addr: bigint | number, data: Uint8Array): Promise<void> {
    if (data.length === 0) return;
    await this.command(`write ${hex(addr)} ${hex(data.length)} 0x${Buffer.from(data.buffer, data.byteOffset, data.length).toString('hex')}`);
  }

  /** Fills `size` bytes of guest memory with `byte`. */
  async memset(addr: bigint | number, size: number, byte: number): Promise<void> {
    await this.command(`memset ${hex(addr)} ${hex(size)} ${hex(byte)}`);
  }

  /** Reports the input GPIO lines of the device at `qomPath` as IRQ lines (the IOAPIC's pins for x86). */
  async irqInterceptIn(qomPath: string): Promise<void> {
    await this.command(`irq_intercept_in ${qomPath}`);
  }

  /** The last level reported for `line` (false if never reported). */
  irqLevel(line: number): boolean {
    return this.#levels.get(line) ?? false;
  }

  /**
   * Resolves once an IRQ change matching `match` is reported, counting from
   * event index `from` (so an event that arrived before the wait began counts).
   * @throws Error after `timeoutMs`.
   */
  waitIrq(match: (e: IrqEvent) => boolean, from: number, timeoutMs: number): Promise<IrqEvent> {
    const seen = this.irqEvents.slice(from).find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const waiter = {
        match,
        resolve: () => {
          clearTimeout(timer);
          resolve(this.irqEvents.slice(from).find(match) as IrqEvent);
        },
      };
      const timer = setTimeout(() => {
        this.#irqWaiters = this.#irqWaiters.filter((w) => w !== waiter);
        reject(new Error(`qtest: no matching IRQ change within ${timeoutMs} ms (seen: ${JSON.stringify(this.irqEvents.slice(from))})`));
      }, timeoutMs);
      this.#irqWaiters.push(waiter);
    });
  }

  /** Closes the connection (QEMU exits when its qtest chardev closes). */
  close(): void {
    this.#socket.close();
  }

  #onLine(line: string): void {
    const words = line.trim().split(/\s+/);
    if (words[0] === 'IRQ') return this.#onIrq(words);
    const p = this.#pending.shift();
    if (!p) return;
    clearTimeout(p.timer);
    if (words[0] === 'OK') p.resolve(words.slice(1));
    else p.reject(new Error(`qtest: '${p.command.slice(0, 80)}' answered '${line}'`));
  }

  #onIrq(words: string[]): void {
    const event = { line: Number(words[2]), level: words[1] === 'raise' };
    this.irqEvents.push(event);
    this.#levels.set(event.line, event.level);
    const ready = this.#irqWaiters.filter((w) => w.match(event));
    this.#irqWaiters = this.#irqWaiters.filter((w) => !w.match(event));
    for (const w of ready) w.resolve();
  }

  #onClose(): void {
    this.#fail(new Error('qtest: QEMU closed the connection'));
  }

  #fail(e: Error): void {
    this.#gone ??= e;
    for (const p of this.#pending.splice(0)) {
      clearTimeout(p.timer);
      p.reject(this.#gone);
    }
    this.#socket.close();
  }
}

/** `0x…` for a number or bigint. */
export function hex(v: bigint | number): string {
  return `0x${v.toString(16)}`;
}
