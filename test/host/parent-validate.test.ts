/**
 * Every refusal of validateParent: one line, EINVAL, naming the module, the
 * type or attribute and the field — and the well-formed variants it accepts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { VfioUserError } from '../../src/errors.js';
import { validateParent } from '../../src/host/parent-validate.js';

const create = (): undefined => undefined;
const apply = (): undefined => undefined;

/** A well-formed parent; `patch` edits a fresh copy. */
function parentWith(patch: (p: Record<string, unknown>, type: Record<string, unknown>) => void): Record<string, unknown> {
  const type: Record<string, unknown> = { name: 'small', cost: { memory: 64 }, maxInstances: 3, attributes: { fill: { description: 'd', apply } }, create };
  const parent: Record<string, unknown> = { name: 'pool', resources: { memory: 1024, slots: 2 }, types: [type] };
  patch(parent, type);
  return parent;
}

function refuses(value: unknown, pattern: RegExp): void {
  assert.throws(
    () => validateParent(value, './p.js'),
    (error: unknown) => {
      assert.ok(error instanceof VfioUserError);
      assert.equal(error.code, 'EINVAL');
      assert.match(error.message, /^parent \.\/p\.js: /);
      assert.match(error.message, pattern);
      assert.doesNotMatch(error.message, /\n/);
      return true;
    },
  );
}

describe('validateParent', () => {
  it('accepts a well-formed parent and returns it', () => {
    const parent = parentWith(() => undefined);
    assert.equal(validateParent(parent, './p.js'), parent);
  });

  it('refuses what is not a parent object', () => {
    refuses(undefined, /is undefined; expected an object/);
    refuses([1], /is an array of 1; expected an object/);
    refuses('memory-pool', /is "memory-pool"; expected an object/);
  });

  it('refuses a bad parent name', () => {
    for (const name of ['', 'has space', 'a/b', 'x'.repeat(65), '.', '..', 'scripts.d', 'plus+sign', 42]) {
      refuses(
        parentWith((p) => (p.name = name)),
        /name .* must be 1–64 characters of \[A-Za-z0-9_\.:-\], and not \., \.\. or scripts\.d/,
      );
    }
    assert.equal(validateParent(parentWith((p) => (p.name = 'x'.repeat(64))), 'p').name, 'x'.repeat(64));
  });

  it('refuses unknown properties (a misspelt one is not silently ignored)', () => {
    refuses(parentWith((p) => (p.resource = {})), /has an unknown property "resource" \(expected name, resources, types\)/);
    refuses(
      parentWith((_p, t) => (t.maxInstance = 2)),
      /type "small" has an unknown property "maxInstance"/,
    );
    refuses(
      parentWith((_p, t) => (t.attributes = { fill: { apply, desc: 'x' } })),
      /type "small" attribute "fill" has an unknown property "desc"/,
    );
  });

  it('refuses bad resources', () => {
    refuses(parentWith((p) => (p.resources = [1])), /resources is an array of 1; expected an object/);
    refuses(parentWith((p) => (p.resources = { 'v ram': 1 })), /resource name "v ram" must be/);
    for (const capacity of [-1, Number.NaN, Number.POSITIVE_INFINITY, 1.5, '5', 2 ** 53]) {
      refuses(
        parentWith((p) => (p.resources = { memory: capacity, slots: 2 })),
        /resource memory's capacity is .*; expected a non-negative integer/,
      );
    }
  });

  it('refuses a parent without types', () => {
    refuses(parentWith((p) => (p.types = [])), /pool offers no types \(types is an array of 0\)/);
    refuses(parentWith((p) => delete p.types), /pool offers no types \(types is undefined\)/);
  });

  it('refuses bad type names and duplicates', () => {
    refuses(parentWith((p) => (p.types = [null])), /types\[0\] is null; expected an object with name and create/);
    refuses(
      parentWith((p, t) => (p.types = [t, , t])), // eslint-disable-line no-sparse-arrays
      /types\[1\] is undefined; expected an object/,
    );
    for (const name of ['', 'a b', 'a/b', 'x'.repeat(65), 7]) {
      refuses(
        parentWith((_p, t) => (t.name = name)),
        /types\[0\] has name .*; type names are 1–64 characters of \[A-Za-z0-9_\.:\+-\]/,
      );
    }
    refuses(
      parentWith((p, t) => (p.types = [t, { ...t }])),
      /type "small" is declared twice/,
    );
  });

  it('refuses a type without create, or with non-string label or description', () => {
    refuses(parentWith((_p, t) => delete t.create), /type "small" has no create function \(it is undefined\)/);
    refuses(parentWith((_p, t) => (t.create = {})), /type "small" has no create function \(it is an object\)/);
    refuses(parentWith((_p, t) => (t.label = 5)), /type "small" label is 5; expected a string/);
    refuses(parentWith((_p, t) => (t.description = null)), /type "small" description is null; expected a string/);
  });

  it('refuses a cost naming an unknown resource, listing the known ones', () => {
    refuses(parentWith((_p, t) => (t.cost = { vram: 1 })), /type "small" cost names an unknown resource "vram" \(resources: memory, slots\)/);
    refuses(
      parentWith((p, t) => {
        delete p.resources;
        t.cost = { memory: 1 };
      }),
      /cost names an unknown resource "memory" \(the parent declares no resources\)/,
    );
    refuses(parentWith((_p, t) => (t.cost = { toString: 1 })), /unknown resource "toString"/);
  });

  it('refuses negative, fractional and non-finite costs and maxInstances', () => {
    for (const amount of [-64, 0.5, Number.NaN, Number.NEGATIVE_INFINITY, '64']) {
      refuses(
        parentWith((_p, t) => (t.cost = { memory: amount })),
        /type "small" cost of memory is .*; expected a non-negative integer/,
      );
    }
    for (const max of [-1, 1.5, Number.POSITIVE_INFINITY, '3']) {
      refuses(
        parentWith((_p, t) => (t.maxInstances = max)),
        /type "small" maxInstances is .*; expected a non-negative integer/,
      );
    }
  });

  it('refuses a type one instance of which exceeds the capacity', () => {
    refuses(
      parentWith((_p, t) => (t.cost = { memory: 1025 })),
      /type "small" one instance costs 1025 memory but the parent has 1024: none could ever be created/,
    );
    assert.ok(validateParent(parentWith((_p, t) => (t.cost = { memory: 1024 })), 'p'), 'exactly the capacity fits');
  });

  it('refuses an unbounded type (no maxInstances, no positive cost)', () => {
    const unbounded = /type "small" is unbounded: give it maxInstances or a positive cost/;
    refuses(
      parentWith((_p, t) => {
        delete t.maxInstances;
        delete t.cost;
      }),
      unbounded,
    );
    refuses(
      parentWith((_p, t) => {
        delete t.maxInstances;
        t.cost = { memory: 0 };
      }),
      unbounded,
    );
    assert.ok(validateParent(parentWith((_p, t) => delete t.maxInstances), 'p'), 'a positive cost bounds it');
    assert.ok(validateParent(parentWith((_p, t) => delete t.cost), 'p'), 'maxInstances bounds it');
  });

  it('refuses attributes without apply, of the wrong shape, or with bad names', () => {
    refuses(parentWith((_p, t) => (t.attributes = { fill: {} })), /type "small" attribute "fill" has no apply function \(it is undefined\)/);
    refuses(parentWith((_p, t) => (t.attributes = { fill: { apply: 'yes' } })), /attribute "fill" has no apply function \(it is "yes"\)/);
    refuses(parentWith((_p, t) => (t.attributes = { fill: apply })), /attribute "fill" is .*; expected \{ apply\(instance, value\), description\? \}/);
    refuses(parentWith((_p, t) => (t.attributes = [apply])), /type "small" attributes is an array of 1/);
    refuses(parentWith((_p, t) => (t.attributes = { 'a b': { apply } })), /type "small" attribute name "a b" must be 1–64 characters/);
    refuses(parentWith((_p, t) => (t.attributes = { fill: { apply, description: 3 } })), /attribute "fill" description is 3; expected a string/);
  });

  it('accepts a group shared by instance, type, parent or one of the type’s attributes, and refuses any other', () => {
    for (const group of ['instance', 'type', 'parent', { attr: 'fill' }]) assert.ok(validateParent(parentWith((_p, t) => (t.group = group)), 'p'));
    refuses(parentWith((_p, t) => (t.group = 'card')), /type "small" group is "card"; expected 'instance', 'type', 'parent' or \{ attr: NAME \}/);
    refuses(parentWith((_p, t) => (t.group = 3)), /type "small" group is 3; expected/);
    refuses(parentWith((_p, t) => (t.group = { attr: 'slot' })), /type "small" group\.attr is "slot"; it must name one of the type's attributes \(fill\)/);
    refuses(parentWith((_p, t) => {
      delete t.attributes;
      t.group = { attr: 'fill' };
    }), /group\.attr is "fill"; it must name one of the type's attributes \(it has none\)/);
    refuses(parentWith((_p, t) => (t.group = { attr: 'fill', by: 'x' })), /type "small" group has an unknown property "by" \(expected attr\)/);
  });
});
