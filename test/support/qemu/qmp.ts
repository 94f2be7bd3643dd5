/**
 * A QMP client (QEMU Machine Protocol: one JSON object per line). QEMU greets
 * with `{"QMP": …}`; `qmp_capabilities` leaves negotiation mode; each command
 * carries an `id` its answer (`return` or `error`) echoes; events arrive at
 * any time and are kept for {@link QmpClient.waitEvent}.
 */
import type { Socket } from 'node:net';
import { LineSocket } from './line-socket.js';

/** An asynchronous QMP event. */
export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
}

/** A command QEMU answered with `error`. */
export class QmpError extends Error {
  readonly command: string;
  readonly errorClass: string;
  readonly desc: string;

  constructor(command: string, errorClass: string, desc: string) {
    super(`QMP ${command}: ${errorClass}: ${desc}`);
    this.command = command;
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

/** The QMP connection to one QEMU. */
export class QmpClient {
  readonly #socket: LineSocket;
  readonly #pending = new Map<number, Pending>();
  /** Every event received so far, in order. */
  readonly events: QmpEvent[] = [];
  #eventWaiters: { match: (e: QmpEvent) => boolean; resolve: (e: QmpEvent) => void }[] = [];
  #greeted!: () => void;
  readonly #greeting = new Promise<void>((resolve) => (this.#greeted = resolve));
  #nextId = 1;
  #gone: Error | undefined;

  private constructor(socket: Socket) {
    this.#socket = new LineSocket(
      socket,
      (line) => this.#onLine(line),
      () => this.#onClose(),
    );
  }

  /** Waits for the greeting and leaves capabilities negotiation. */
  static async connect(socket: Socket): Promise<QmpClient> {
    const qmp = new QmpClient(socket);
    await qmp.#greeting;
    await qmp.execute('qmp_capabilities');
    return qmp;
  }

  /**
   * Runs `command` with `args`; resolves with its `return` value.
   * @throws {QmpError} when QEMU answers `error`; Error when QEMU goes away first.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.#gone) return Promise.reject(this.#gone);
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject });
      this.#socket.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`);
    });
  }

  /**
   * Resolves with the first event matching `match` received at or after index `from` of {@link events}.
   * @throws Error after `timeoutMs`.
   */
  waitEvent(match: (e: QmpEvent) => boolean, from: number, timeoutMs: number): Promise<QmpEvent> {
    const seen = this.events.slice(from).find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const waiter = {
        match,
        resolve: (e: QmpEvent) => {
          clearTimeout(timer);
          resolve(e);
        },
      };
      const timer = setTimeout(() => {
        this.#eventWaiters = this.#eventWaiters.filter((w) => w !== waiter);
        reject(new Error(`QMP: no matching event within ${timeoutMs} ms (seen: ${this.events.map((e) => e.event).join(', ')})`));
      }, timeoutMs);
      this.#eventWaiters.push(waiter);
    });
  }

  /** Closes the connection. */
  close(): void {
    this.#socket.close();
  }

  #onLine(line: string): void {
    if (line.trim() === '') return;
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      return; // not QMP (QEMU writes nothing else here); ignored rather than thrown from a socket callback
    }
    const msg = parsed as { QMP?: unknown; id?: number; return?: unknown; error?: { class: string; desc: string }; event?: string; data?: Record<string, unknown> };
    if (msg.QMP !== undefined) return this.#greeted();
    if (msg.event !== undefined) return this.#onEvent({ event: msg.event, ...(msg.data ? { data: msg.data } : {}) });
    const p = msg.id === undefined ? undefined : this.#pending.get(msg.id);
    if (!p || msg.id === undefined) return;
    this.#pending.delete(msg.id);
    if (msg.error) p.reject(new QmpError(p.command, msg.error.class, msg.error.desc));
    else p.resolve(msg.return);
  }

  #onEvent(e: QmpEvent): void {
    this.events.push(e);
    const ready = this.#eventWaiters.filter((w) => w.match(e));
    this.#eventWaiters = this.#eventWaiters.filter((w) => !w.match(e));
    for (const w of ready) w.resolve(e);
  }

  #onClose(): void {
    this.#gone = new Error('QMP: QEMU closed the connection');
    for (const p of this.#pending.values()) p.reject(this.#gone);
    this.#pending.clear();
    this.#greeted();
  }
}
