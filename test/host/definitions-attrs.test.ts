/**
 * `modify --addattr/--delattr [--index]` semantics (checked against mdevctl's
 * testdata/modify expectations), attribute names, and UUID spellings.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { addAttr, attrNameProblem, delAttr, formatAttrsText } from '../../src/host/attrs.js';
import { formatMdevConfig, parseMdevConfig } from '../../src/host/definitions.js';
import { isCanonicalUuid, isUuid, newUuid, normalizeUuid } from '../../src/host/uuid.js';
import type { MdevAttr } from '../../src/host/types.js';

const FIXTURES = fileURLToPath(new URL('../../../test/host/fixtures/mdevctl/', import.meta.url));
const fixture = (path: string): string => readFileSync(join(FIXTURES, path), 'utf8');

describe('addAttr / delAttr: mdevctl modify semantics', () => {
  const defined = parseMdevConfig(fixture('modify/defined.json'), 'modify/defined.json');
  const edited = (attrs: MdevAttr[]): string => formatMdevConfig({ ...defined, attrs });

  it('produces mdevctl\'s expected files', () => {
    assert.equal(edited(addAttr(defined.attrs, 'added-attr', 'added-attr-value', 3)), fixture('modify/addattr.expected'));
    assert.equal(edited(addAttr(defined.attrs, 'added-attr', 'added-attr-value')), fixture('modify/addattr-noindex.expected'));
    assert.equal(edited(delAttr(defined.attrs, 2)), fixture('modify/delattr.expected'));
    assert.equal(edited(delAttr(defined.attrs)), fixture('modify/delattr-noindex.expected'));
  });

  it('never modifies its input', () => {
    const attrs: MdevAttr[] = [{ a: '1' }, { b: '2' }];
    const frozen = Object.freeze([...attrs]);
    assert.deepEqual(addAttr(frozen, 'c', '3', 0), [{ c: '3' }, { a: '1' }, { b: '2' }]);
    assert.deepEqual(delAttr(frozen, 0), [{ b: '2' }]);
    assert.deepEqual(delAttr(frozen), [{ a: '1' }]);
    assert.deepEqual(frozen, attrs);
  });

  it('index = length appends; the same name may appear twice', () => {
    assert.deepEqual(addAttr([{ a: '1' }], 'a', '2', 1), [{ a: '1' }, { a: '2' }]);
    assert.deepEqual(addAttr([], 'a', '', 0), [{ a: '' }]);
  });

  it('--delattr without --index on no attributes succeeds and changes nothing (mdevctl pops an empty list)', () => {
    assert.deepEqual(delAttr([]), []);
  });

  it('refuses out-of-range, negative and fractional indexes with EINVAL and one line', () => {
    const two: MdevAttr[] = [{ a: '1' }, { b: '2' }];
    const cases: [() => unknown, string][] = [
      [() => addAttr(two, 'c', '3', 3), 'Attribute index 3 is invalid (2 attributes; valid: 0-2)'],
      [() => addAttr(two, 'c', '3', -1), 'Attribute index -1 is invalid (2 attributes; valid: 0-2)'],
      [() => addAttr(two, 'c', '3', 0.5), 'Attribute index 0.5 is invalid (2 attributes; valid: 0-2)'],
      [() => delAttr(two, 2), 'Attribute index 2 is invalid (2 attributes; valid: 0-1)'],
      [() => delAttr([{ a: '1' }], 1), 'Attribute index 1 is invalid (1 attribute; valid: 0-0)'],
      [() => delAttr([], 0), 'Attribute index 0 is invalid (0 attributes; valid: none: the definition has no attributes)'],
      [() => delAttr(two, Number.NaN), 'Attribute index NaN is invalid (2 attributes; valid: 0-1)'],
    ];
    for (const [call, message] of cases) assert.throws(call, { code: 'EINVAL', message });
  });

  it('refuses attribute names that cannot be sysfs file names', () => {
    for (const name of ['', 'a/b', 'a b', '.', '..', 'tab\there', 'nl\n', 'x'.repeat(256)]) {
      assert.throws(() => addAttr([], name, 'v'), { code: 'EINVAL' }, JSON.stringify(name));
      assert.notEqual(attrNameProblem(name), undefined);
    }
    assert.equal(attrNameProblem('assign_adapter'), undefined);
    assert.equal(attrNameProblem('x'.repeat(255)), undefined);
    assert.throws(() => addAttr([], 'a', 5 as unknown as string), { code: 'EINVAL', message: "the value of attribute 'a' must be a string" });
  });

  it('formats list -v attribute lines as mdevctl (raw, 0-based)', () => {
    assert.equal(formatAttrsText([]), '');
    assert.equal(formatAttrsText([{ assign_adapter: '5' }, { 'x"y': 'a b' }]), '  Attrs:\n    @{0}: {"assign_adapter":"5"}\n    @{1}: {"x"y":"a b"}\n');
  });
});

describe('UUIDs as mdevctl reads them', () => {
  const canonical = '976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9';

  it('accepts any case and the simple, braced and URN spellings, normalized to lower-case hyphenated', () => {
    for (const spelling of [
      canonical, canonical.toUpperCase(), '976D8cc2-4bfc-43B9-b9f9-f4af2de91ab9',
      '976d8cc24bfc43b9b9f9f4af2de91ab9', `{${canonical}}`, `urn:uuid:${canonical.toUpperCase()}`,
    ]) {
      assert.equal(isUuid(spelling), true, spelling);
      assert.equal(normalizeUuid(spelling), canonical, spelling);
    }
    assert.equal(isCanonicalUuid(canonical), true);
    assert.equal(isCanonicalUuid(canonical.toUpperCase()), false);
    assert.equal(isCanonicalUuid(`{${canonical}}`), false);
    assert.equal(normalizeUuid('00000000-0000-0000-0000-000000000000'), '00000000-0000-0000-0000-000000000000');
  });

  it('refuses everything else with EINVAL naming the input', () => {
    for (const bad of ['', 'x', `${canonical}0`, canonical.slice(1), `{${canonical}`, `urn:${canonical}`, '976d8cc2-4bfc-43b9-b9f9-f4af2de91abg',
      '976d8cc2-4bfc43b9-b9f9-f4af2de91ab9-', ` ${canonical}`, `${canonical}\n`]) {
      assert.equal(isUuid(bad), false, JSON.stringify(bad));
      assert.throws(() => normalizeUuid(bad), { code: 'EINVAL', message: `invalid UUID '${bad}': expected 8-4-4-4-12 hex digits` });
    }
    assert.equal(isUuid(5 as unknown as string), false);
  });

  it('newUuid gives distinct canonical version-4 UUIDs', () => {
    const made = new Set(Array.from({ length: 100 }, () => newUuid()));
    assert.equal(made.size, 100);
    for (const uuid of made) {
      assert.equal(isCanonicalUuid(uuid), true, uuid);
      assert.equal(uuid[14], '4', uuid);
    }
  });
});
