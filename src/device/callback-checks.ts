/**
 * Device-author mistakes in region callbacks, made visible: a `read` that
 * returns fewer (or more) bytes than asked, or something that is not a
 * `Uint8Array`, and a callback that throws an error carrying no errno (a bug
 * such as a `TypeError`, which the client sees as EIO). The client's request
 * fails (EINVAL for wrong data, EIO for such an error); the first mistake of each
 * kind in each region is logged at `warn`, naming the region (the device is
 * named by the logger's bindings). Later ones go to `debug` only, so a client
 * repeating a bad access cannot flood the log. An error thrown *with* an errno
 * (`InvalidArgumentError`, `{ errno }`) is a deliberate refusal: not logged here.
 */
import { InvalidArgumentError, VfioUserError } from '../errors.js';
import type { Logger } from '../log.js';
import type { RegionCallbacks } from './types.js';

/** The kinds of mistakes, each reported at warn once per region. */
export const CallbackMistake = {
  SHORT_READ: 'short-read',
  NOT_BYTES: 'not-bytes',
  READ_THREW: 'read-threw',
  WRITE_THREW: 'write-threw',
} as const;
/** One kind of mistake. */
export type CallbackMistake = (typeof CallbackMistake)[keyof typeof CallbackMistake];

const NAMES = ['BAR0', 'BAR1', 'BAR2', 'BAR3', 'BAR4', 'BAR5', 'ROM', 'CONFIG', 'VGA'] as const;

/** A deliberate refusal: an error that says which errno the client gets. */
function hasErrno(error: unknown): boolean {
  if (error instanceof VfioUserError) return error.errno !== undefined;
  const errno = typeof error === 'object' && error !== null ? (error as { errno?: unknown }).errno : undefined;
  return typeof errno === 'number' && Number.isInteger(errno) && errno !== 0;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value !== 'object') return typeof value;
  return (value as object).constructor?.name ?? 'an object';
}

/** Calls a region's `read`/`write` callbacks and reports the author's mistakes (see the module comment). */
export class CallbackChecks {
  /** `BAR0`…`BAR5`, `ROM`, `CONFIG` (the config-space vendor area's callbacks), `VGA` or `REGION<n>`. */
  readonly region: string;
  readonly #logger: Logger | undefined;
  readonly #reported = new Set<CallbackMistake>();

  constructor(index: number, logger: Logger | undefined) {
    this.region = NAMES[index] ?? `REGION${index}`;
    this.#logger = logger;
  }

  /** `definition.read(offset, length)`, its result or failure checked. Returns (or throws) what the callback did. */
  read(definition: RegionCallbacks, offset: number, length: number): Uint8Array | Promise<Uint8Array> {
    let result: Uint8Array | Promise<Uint8Array>;
    try {
      result = (definition.read as NonNullable<RegionCallbacks['read']>).call(definition, offset, length);
    } catch (error) {
      throw this.#threw(CallbackMistake.READ_THREW, offset, length, error);
    }
    if (result instanceof Uint8Array) return result.length === length ? result : this.#checked(result, offset, length);
    if (result instanceof Promise) {
      return result.then(
        (data: unknown) => this.#checked(data, offset, length),
        (error: unknown) => Promise.reject(this.#threw(CallbackMistake.READ_THREW, offset, length, error)),
      );
    }
    return this.#checked(result, offset, length);
  }

  /** `definition.write(offset, data)`, its failure checked. */
  write(definition: RegionCallbacks, offset: number, data: Uint8Array): void | Promise<void> {
    let result: void | Promise<void>;
    try {
      result = (definition.write as NonNullable<RegionCallbacks['write']>).call(definition, offset, data);
    } catch (error) {
      throw this.#threw(CallbackMistake.WRITE_THREW, offset, data.length, error);
    }
    if (result instanceof Promise) return result.catch((error: unknown) => Promise.reject(this.#threw(CallbackMistake.WRITE_THREW, offset, data.length, error)));
    return result;
  }

  /**
   * Returns `data` after reporting a mistake in it (the server refuses a wrong length with EINVAL).
   * @throws {InvalidArgumentError} EINVAL when it is not a Uint8Array.
   */
  #checked(data: unknown, offset: number, length: number): Uint8Array {
    const at = `0x${offset.toString(16)}`;
    if (!(data instanceof Uint8Array)) {
      const message = `${this.region} read callback returned ${describe(data)}, not a Uint8Array, for a ${length}-byte read at ${at}: the client gets EINVAL`;
      this.#report(CallbackMistake.NOT_BYTES, { offset, length, returned: describe(data) }, message);
      throw new InvalidArgumentError(message);
    }
    if (data.length !== length) {
      this.#report(CallbackMistake.SHORT_READ, { offset, length, returned: data.length }, `${this.region} read callback returned ${data.length} bytes for a ${length}-byte read at ${at}: the client gets EINVAL (return exactly \`length\` bytes)`);
    }
    return data as Uint8Array;
  }

  /** Reports a callback's error when it carries no errno; returns it for rethrowing. */
  #threw(kind: CallbackMistake, offset: number, length: number, error: unknown): unknown {
    if (!hasErrno(error)) {
      const what = kind === CallbackMistake.READ_THREW ? 'read' : 'write';
      const name = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
      this.#report(kind, { offset, length, err: error }, `${this.region} ${what} callback threw ${name} (at 0x${offset.toString(16)}, ${length} bytes): the client gets EIO; throw an error with an errno (e.g. InvalidArgumentError) to refuse an access`);
    }
    return error;
  }

  #report(kind: CallbackMistake, fields: Record<string, unknown>, message: string): void {
    const first = !this.#reported.has(kind);
    this.#reported.add(kind);
    const record = { region: this.region, mistake: kind, ...fields };
    if (first) this.#logger?.warn(record, `${message} (reported once per region; later ones at debug)`);
    else this.#logger?.debug(record, message);
  }
}
