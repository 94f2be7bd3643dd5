/**
 * available_instances from the resource model: types share a parent's
 * resources (creating a 256 MiB instance lowers the 64 MiB type too),
 * maxInstances caps one type, several resources bound a type by the scarcest,
 * and the arithmetic agrees with a brute-force count on random states.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { VfioUserError } from '../../src/errors.js';
import { availableInstances, checkAvailable, resourceUsage, typeInfos } from '../../src/host/availability.js';
import { parent as gpioBank } from '../../src/host/parents/gpio-bank.js';
import { parent as memoryPool } from '../../src/host/parents/memory-pool.js';
import { validateParent } from '../../src/host/parent-validate.js';
import type { TypeInfo } from '../../src/host/api.js';
import type { MdevParent } from '../../src/host/types.js';
import { prngU32 } from '../support/prng.js';

const create = (): undefined => undefined;

function avail(parent: MdevParent, active: Record<string, number>): Record<string, number> {
  return Object.fromEntries(availableInstances(parent, new Map(Object.entries(active))));
}

/** A parent with two resources and types drawing on one, the other, both, or none (capped). */
const mixed = validateParent(
  {
    name: 'mixed',
    resources: { memory: 100, engines: 3 },
    types: [
      { name: 'mem', cost: { memory: 30 }, create },
      { name: 'eng', cost: { engines: 1 }, maxInstances: 2, create },
      { name: 'both', cost: { memory: 20, engines: 2 }, create },
      { name: 'free', cost: { memory: 0 }, maxInstances: 5, create },
    ],
  },
  'mixed',
);

describe('availableInstances', () => {
  it('memory-pool: an empty 1 GiB pool offers 16 × 64M or 4 × 256M', () => {
    assert.deepEqual(avail(memoryPool, {}), { '64M': 16, '256M': 4 });
  });

  it('memory-pool: creating one 256M instance lowers 64M by four, and 64M instances lower 256M', () => {
    assert.deepEqual(avail(memoryPool, { '256M': 1 }), { '64M': 12, '256M': 3 });
    assert.deepEqual(avail(memoryPool, { '64M': 1 }), { '64M': 15, '256M': 3 });
    assert.deepEqual(avail(memoryPool, { '64M': 4 }), { '64M': 12, '256M': 3 });
    assert.deepEqual(avail(memoryPool, { '64M': 5 }), { '64M': 11, '256M': 2 });
    assert.deepEqual(avail(memoryPool, { '64M': 15 }), { '64M': 1, '256M': 0 });
    assert.deepEqual(avail(memoryPool, { '64M': 4, '256M': 3 }), { '64M': 0, '256M': 0 });
  });

  it('gpio-bank: lines shared, and the 4-line type capped at 8 whatever lines are left', () => {
    assert.deepEqual(avail(gpioBank, {}), { '16': 4, '4': 8 });
    assert.deepEqual(avail(gpioBank, { '16': 1 }), { '16': 3, '4': 8 });
    assert.deepEqual(avail(gpioBank, { '16': 3 }), { '16': 1, '4': 4 });
    assert.deepEqual(avail(gpioBank, { '4': 8 }), { '16': 2, '4': 0 });
    assert.deepEqual(avail(gpioBank, { '4': 1 }), { '16': 3, '4': 7 });
  });

  it('bounds a type by the scarcest of its resources and by maxInstances', () => {
    assert.deepEqual(avail(mixed, {}), { mem: 3, eng: 2, both: 1, free: 5 });
    assert.deepEqual(avail(mixed, { eng: 1 }), { mem: 3, eng: 1, both: 1, free: 5 });
    assert.deepEqual(avail(mixed, { eng: 2 }), { mem: 3, eng: 0, both: 0, free: 5 });
    assert.deepEqual(avail(mixed, { mem: 3 }), { mem: 0, eng: 2, both: 0, free: 5 });
    assert.deepEqual(avail(mixed, { both: 1, free: 5 }), { mem: 2, eng: 1, both: 0, free: 0 });
  });

  it('reports 0, not a negative count, when active instances exceed the capacity', () => {
    assert.deepEqual(avail(memoryPool, { '256M': 5 }), { '64M': 0, '256M': 0 });
    assert.deepEqual(avail(gpioBank, { '4': 9 }), { '16': 1, '4': 0 });
  });

  it('ignores active counts of names that are not the parent’s types', () => {
    assert.deepEqual(avail(memoryPool, { '128M': 3, 'memory-pool-64M': 2 }), { '64M': 16, '256M': 4 });
  });

  it('adds up resource usage over types', () => {
    assert.deepEqual(Object.fromEntries(resourceUsage(mixed, new Map([['mem', 2], ['both', 1], ['eng', 1]]))), { memory: 80, engines: 3 });
  });

  it('agrees with counting how many more instances fit, one at a time, on random states', () => {
    const next = prngU32(13);
    const fits = (active: Map<string, number>): boolean => {
      const used = resourceUsage(mixed, active);
      const withinCaps = mixed.types.every((t) => t.maxInstances === undefined || (active.get(t.name) ?? 0) <= t.maxInstances);
      return withinCaps && [...used].every(([r, u]) => u <= (mixed.resources?.[r] ?? 0));
    };
    for (let round = 0; round < 300; round++) {
      const active = new Map<string, number>();
      for (const t of mixed.types) active.set(t.name, next() % 3);
      if (!fits(active)) continue;
      const available = availableInstances(mixed, active);
      for (const t of mixed.types) {
        let more = 0;
        const trial = new Map(active);
        for (;;) {
          trial.set(t.name, (active.get(t.name) ?? 0) + more + 1);
          if (!fits(trial)) break;
          more++;
        }
        assert.equal(available.get(t.name), more, `${t.name} with ${JSON.stringify([...active])}`);
      }
    }
  });
});

describe('checkAvailable', () => {
  function refusal(fn: () => void): VfioUserError {
    try {
      fn();
    } catch (error) {
      assert.ok(error instanceof VfioUserError);
      return error;
    }
    return assert.fail('expected a refusal');
  }

  it('passes while an instance fits', () => {
    assert.doesNotThrow(() => checkAvailable(memoryPool, '256M', new Map([['256M', 3]])));
    assert.doesNotThrow(() => checkAvailable(memoryPool, '64M', new Map([['64M', 15]])));
  });

  it('refuses beyond the shared resource with ENOSPC, naming what is left', () => {
    const error = refusal(() => checkAvailable(memoryPool, '256M', new Map([['64M', 13]])));
    assert.equal(error.code, 'ENOSPC');
    assert.equal(error.message, `memory-pool-256M: no available instances (one needs ${256 << 20} memory; ${192 << 20} of ${1 << 30} left with the instances active)`);
  });

  it('refuses beyond maxInstances with ENOSPC, naming the cap', () => {
    const error = refusal(() => checkAvailable(gpioBank, '4', new Map([['4', 8]])));
    assert.equal(error.code, 'ENOSPC');
    assert.equal(error.message, 'gpio-bank-4: no available instances (8 active, at most 8 of this type)');
  });

  it('refuses a type the parent does not have with ENOENT', () => {
    const error = refusal(() => checkAvailable(memoryPool, '128M', new Map()));
    assert.equal(error.code, 'ENOENT');
    assert.match(error.message, /memory-pool has no type 128M/);
  });
});

describe('typeInfos', () => {
  it('reports each type as `types` shows it, with availability after the active instances', () => {
    const attributes = [
      { name: 'fill', description: 'byte pattern (hex, 1-64 bytes) written over all of BAR0' },
      { name: 'write', description: 'OFFSET:HEX, bytes written at an offset of BAR0' },
    ];
    const info = (size: string, mib: number, availableInstances: number): TypeInfo => ({
      parent: 'memory-pool',
      mdevType: `memory-pool-${size}`,
      name: `memory ${size}`,
      description: `memory device with ${mib} MiB of shared RAM in BAR0, from the 1024 MiB pool`,
      deviceApi: 'vfio-pci',
      availableInstances,
      attributes,
    });
    assert.deepEqual(typeInfos(memoryPool, new Map([['256M', 2]])), [info('64M', 64, 8), info('256M', 256, 2)]);
  });

  it('falls back to the short name and an empty description, and lists no attributes when there are none', () => {
    assert.deepEqual(typeInfos(mixed, new Map()).find((t) => t.mdevType === 'mixed-eng'), {
      parent: 'mixed',
      mdevType: 'mixed-eng',
      name: 'eng',
      description: '',
      deviceApi: 'vfio-pci',
      availableInstances: 2,
      attributes: [],
    });
  });
});
