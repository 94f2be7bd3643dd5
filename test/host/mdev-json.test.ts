/**
 * `list` and `types` outputs, text and --dumpjson, compared byte for byte with
 * mdevctl's own expected outputs (test/host/fixtures/mdevctl/, see its README).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseMdevConfig } from '../../src/host/definitions.js';
import {
  formatListText, formatTypesText, listJson, rowsOfDefinitions, rowsOfInstances, typesJson, type TypeRow,
} from '../../src/host/mdev-json.js';
import type { DefinitionEntry } from '../../src/host/api.js';
import type { InstanceStatus } from '../../src/host/types.js';

const FIXTURES = fileURLToPath(new URL('../../../test/host/fixtures/mdevctl/', import.meta.url));
const fixture = (path: string): string => readFileSync(join(FIXTURES, path), 'utf8');

const P1 = '0000:00:02.0';
const P2 = '0000:00:03.0';
const U = {
  a: '976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9',
  b: '59e8b599-afdd-4766-a59e-415ef4f5a492',
  c: '4a0a190f-dcf3-4def-9342-c48768f0c940',
  d: '9f579710-6ffc-4201-987a-4ffa0fb1f3a5',
};

/** mdevctl's list test set-up (src/tests/list.rs), in a scrambled order. */
function definitions(): DefinitionEntry[] {
  const device1 = parseMdevConfig(fixture('list/device1.json'), 'device1.json');
  const device2 = parseMdevConfig(fixture('list/device2.json'), 'device2.json');
  return [
    { uuid: U.d, parent: P2, config: device1, active: false },
    { uuid: U.d, parent: P1, config: device1, active: false },
    { uuid: U.c, parent: P1, config: device2, active: false },
  ];
}

function instance(uuid: string, parent: string, mdevType: string, more: Partial<InstanceStatus> = {}): InstanceStatus {
  return { uuid, parent, mdevType, state: 'active', socket: `/run/vfio-user/${uuid}.sock`, attrs: [], defined: false, restarts: 0, ...more };
}

describe('list: mdevctl text and --dumpjson', () => {
  it('list --defined [-v] [--dumpjson]', () => {
    const rows = rowsOfDefinitions(definitions());
    assert.equal(formatListText(rows), fixture('list/defined.text'));
    assert.equal(formatListText(rows, { verbose: true }), fixture('list/defined-verbose.text'));
    assert.equal(listJson(rows), fixture('list/defined.json'));
  });

  it('-u UUID: one match is the bare config (definition-file form); several keep the nested form', () => {
    const all = definitions();
    const byUuid = rowsOfDefinitions(all.filter((d) => d.uuid === U.d));
    assert.equal(listJson(byUuid, { uuid: U.d }), fixture('list/defined-uuid.json'));
    const byUuidParent = rowsOfDefinitions(all.filter((d) => d.uuid === U.d && d.parent === P1));
    assert.equal(listJson(byUuidParent, { uuid: U.d }), fixture('list/defined-uuid-parent.json'));
    assert.equal(listJson(byUuidParent), `[\n  {\n    "${P1}": [\n      {\n        "${U.d}": ${
      fixture('list/defined-uuid-parent.json').replaceAll('\n', '\n        ')}\n      }\n    ]\n  }\n]`, 'without -u: nested');
  });

  it('no match: empty text, [] (with or without -u)', () => {
    assert.equal(formatListText([]), '');
    assert.equal(listJson([]), fixture('list/no-match-uuid.json'));
    assert.equal(listJson([], { uuid: U.a }), '[]');
  });

  it('running instances, start manual unless defined auto', () => {
    const rows = rowsOfInstances([instance(U.b, P2, 'arbitrary_type2'), instance(U.a, P1, 'arbitrary_type1')]);
    assert.equal(formatListText(rows), fixture('list/active.text'));
    assert.equal(formatListText(rows, { verbose: true }), fixture('list/active.text'), 'no attributes, no Attrs block');
    assert.equal(listJson(rows), fixture('list/active.json'));
    assert.equal(listJson(rows.filter((r) => r.uuid === U.a), { uuid: U.a }), fixture('list/active-uuid.json'));
  });

  it('marks (defined) on running instances and (active) on definitions', () => {
    const running = rowsOfInstances([
      instance(U.a, P1, 'memory-pool-64M', { defined: true, start: 'auto', attrs: [{ fill: '0xff' }] }),
      instance(U.b, P1, 'memory-pool-256M'),
    ]);
    assert.equal(formatListText(running, { verbose: true }),
      `${U.b} ${P1} memory-pool-256M manual\n${U.a} ${P1} memory-pool-64M auto (defined)\n  Attrs:\n    @{0}: {"fill":"0xff"}\n`);
    const defs = definitions().map((d) => ({ ...d, active: d.parent === P2 }));
    assert.equal(formatListText(rowsOfDefinitions(defs)), fixture('list/defined.text').replace(`${P2} vfio_ap-passthrough manual\n`, `${P2} vfio_ap-passthrough manual (active)\n`));
    assert.match(formatListText(rowsOfDefinitions(defs)), /manual \(active\)\n$/);
  });

  it('sorts parents by bytes, even integer-like names a JS object would reorder', () => {
    const rows = rowsOfInstances([instance(U.a, '9', 't-a'), instance(U.b, '10', 't-a'), instance(U.c, 'B', 't-a'), instance(U.d, 'a', 't-a')]);
    assert.deepEqual(formatListText(rows).split('\n').map((line) => line.split(' ')[1]), ['10', '9', 'B', 'a', undefined]);
    const parsed = JSON.parse(listJson(rows)) as Record<string, unknown>[];
    assert.equal(parsed.length, 1);
    const order = [...listJson(rows).matchAll(/^ {4}"([^"]+)": \[$/gm)].map((m) => m[1]);
    assert.deepEqual(order, ['10', '9', 'B', 'a']);
  });
});

describe('types: mdevctl text and --dumpjson', () => {
  /** mdevctl's types test set-up (src/tests/types.rs), scrambled. */
  const full: TypeRow[] = [
    { parent: '0000:00:03.0', mdevType: 'nvidia-36', availableInstances: 16, deviceApi: 'vfio-pci', name: 'GRID M10-0Q', description: '' },
    { parent: '0000:00:02.0', mdevType: 'mdev_type3', availableInstances: 1, deviceApi: 'vfio-pci', name: 'name3', description: 'description 3' },
    { parent: '0.0.26ab', mdevType: 'vfio_ccw-io', availableInstances: 4, deviceApi: 'vfio_mdev', name: 'name', description: 'description' },
    { parent: '0000:00:02.0', mdevType: 'mdev_type1', availableInstances: 5, deviceApi: 'vfio-pci', name: 'name1', description: 'description 1' },
    { parent: '0000:00:03.0', mdevType: 'nvidia-155', availableInstances: 4, deviceApi: 'vfio-pci', name: 'GRID M10-2B', description: '' },
    { parent: '0000:00:02.0', mdevType: 'mdev_type2', availableInstances: 16, deviceApi: 'vfio-pci', name: 'name2', description: '' },
  ];

  it('all parents', () => {
    assert.equal(formatTypesText(full), fixture('types/full.text'));
    assert.equal(typesJson(full), fixture('types/full.json'));
  });

  it('one parent (-p), and none', () => {
    const one = full.filter((t) => t.parent === '0000:00:03.0');
    assert.equal(formatTypesText(one), fixture('types/parent-match-2.text'));
    assert.equal(typesJson(one), fixture('types/parent-match-2.json'));
    assert.equal(formatTypesText([]), fixture('types/empty.text'));
    assert.equal(typesJson([]), fixture('types/empty.json'));
  });

  it('trims name and description as mdevctl reads sysfs, a description\'s lines joined with ", "', () => {
    const type: TypeRow = { parent: 'memory-pool', mdevType: 'memory-pool-64M', availableInstances: 16, deviceApi: 'vfio-pci', name: ' 64 MiB\n', description: 'first line\nsecond line\n' };
    assert.equal(formatTypesText([type]),
      'memory-pool\n  memory-pool-64M\n    Available instances: 16\n    Device API: vfio-pci\n    Name: 64 MiB\n    Description: first line, second line\n');
    assert.deepEqual(JSON.parse(typesJson([type])), [{ 'memory-pool': [{ 'memory-pool-64M': {
      available_instances: 16, device_api: 'vfio-pci', name: '64 MiB', description: 'first line, second line' } }] }]);
  });
});
