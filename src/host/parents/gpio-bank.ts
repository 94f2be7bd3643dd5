/**
 * Built-in sample parent `gpio-bank`: a bank of 64 digital input lines wired
 * to GPIO cards (`src/devices/gpio.ts`, the 16-channel PCI-IDIO-16). Its
 * resource model differs from `memory-pool`'s: a count of lines, and a
 * per-type cap (the bank has connectors for at most 8 narrow cards):
 *
 * | type id | lines wired | cost | max instances | available on an empty bank |
 * |---|---|---|---|---|
 * | `gpio-bank-16` | inputs 0–15 | 16 lines | — | 4 |
 * | `gpio-bank-4` | inputs 0–3 | 4 lines | 8 | 8 |
 *
 * Three `gpio-bank-16` instances leave 16 lines: four `gpio-bank-4`; one
 * `gpio-bank-16` leaves 48 lines, yet only eight `gpio-bank-4` (the cap).
 *
 * Attribute `inputs`: the levels of the card's wired input lines at start,
 * as a mask (bit n = input n; decimal or `0x` hex, e.g. `0x5`). A
 * `gpio-bank-4` card refuses bits above 3 (those inputs are not wired, so
 * nothing drives them). The card's outputs are the driver's as usual.
 *
 * Attribute `card` (`gpio-bank-4` only): the multi-function card this
 * narrow card is one function of (a name, `[A-Za-z0-9_.:-]`, 1–32
 * characters). Functions of one card share an isolation group
 * (`gpio-bank/card=<name>`): one client owns them all, and none can be
 * attached until every one of them is active. Without it, an instance is a
 * group of its own.
 */
import { createGpioDevice, GPIO_CHANNELS, type GpioDevice } from '../../devices/gpio.js';
import { InvalidArgumentError } from '../../errors.js';
import type { MdevParent, MdevType } from '../types.js';

/** Lines of the bank. */
export const GPIO_BANK_LINES = 64;

/** An `inputs` mask. @throws {InvalidArgumentError} EINVAL for a malformed mask or one naming an unwired input. */
function parseInputs(value: string, wired: number): number {
  if (!/^(?:0x[0-9a-fA-F]{1,4}|[0-9]{1,5})$/.test(value)) {
    throw new InvalidArgumentError(`inputs ${JSON.stringify(value)} must be a mask of input levels, decimal or 0x hex (e.g. 0x5)`);
  }
  const mask = Number(value);
  const allowed = 2 ** wired - 1;
  if (mask > allowed) throw new InvalidArgumentError(`inputs ${value}: only inputs 0–${wired - 1} of this card are wired (mask at most 0x${allowed.toString(16)})`);
  return mask;
}

/** A `card` name. @throws {InvalidArgumentError} EINVAL for another syntax. */
function checkCard(value: string): void {
  if (!/^[A-Za-z0-9_.:-]{1,32}$/.test(value)) throw new InvalidArgumentError(`card ${JSON.stringify(value)} must be 1–32 characters of [A-Za-z0-9_.:-]`);
}

/** What a type of `wired` lines offers; `multiFunction`: its instances are functions of named cards (attribute `card`, one group per card). */
function gpioType(wired: number, maxInstances?: number, multiFunction = false): MdevType {
  return {
    name: String(wired),
    label: `gpio ${wired}-line`,
    description: `PCI-IDIO-16 card with inputs 0-${wired - 1} wired to ${wired} of the bank's ${GPIO_BANK_LINES} lines`,
    cost: { lines: wired },
    ...(maxInstances === undefined ? {} : { maxInstances }),
    attributes: {
      inputs: {
        description: `levels of inputs 0-${wired - 1} at start (mask, decimal or 0x hex)`,
        apply: (instance, value) => {
          const mask = parseInputs(value, wired);
          const gpio = instance.state as GpioDevice;
          for (let channel = 0; channel < wired; channel++) gpio.setInput(channel, (mask & (1 << channel)) !== 0);
        },
      },
      ...(multiFunction
        ? { card: { description: 'the multi-function card this is a function of: functions of one card share an isolation group', apply: (_instance, value) => checkCard(value) } }
        : {}),
    },
    ...(multiFunction ? { group: { attr: 'card' } } : {}),
    create: ({ uuid }) => {
      const gpio = createGpioDevice({ name: `gpio-bank-${wired}/${uuid}` });
      return { device: gpio.device, state: gpio };
    },
  };
}

/** The `gpio-bank` parent. */
export const parent: MdevParent = {
  name: 'gpio-bank',
  resources: { lines: GPIO_BANK_LINES },
  types: [gpioType(GPIO_CHANNELS), gpioType(4, 8, true)],
};

// A parent module's contract is its default export (types.ts), which the project's lint otherwise forbids.
// eslint-disable-next-line no-restricted-syntax
export default parent;
