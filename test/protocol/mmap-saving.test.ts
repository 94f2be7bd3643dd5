/**
 * SPARSE_MMAP_SAVING and x-client-mmaps codecs (src/protocol/mmap-saving.ts): round trips, the exact bytes,
 * hostile bodies (oversize counts, overlapping or unsorted areas, huge offsets) refused with EINVAL before
 * anything is allocated, savingConflicts, and the VERSION discovery members.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { InvalidArgumentError, ProtocolError } from '../../src/errors.js';
import { MigrationState, RegionInfoFlags } from '../../src/protocol/constants.js';
import { decodeRegionInfo, encodeRegionInfo } from '../../src/protocol/region.js';
import {
  CLIENT_MMAP_SIZE,
  CLIENT_MMAPS_CAPABILITY,
  MAX_CLIENT_MMAPS,
  MAX_SAVING_AREAS,
  SPARSE_MMAP_SAVING_CAP_ID,
  clientMmapsFeatureOf,
  clientMmapsMember,
  clientMmapsRequest,
  clientMmapsRequested,
  decodeClientMmaps,
  decodeSavingCap,
  encodeClientMmaps,
  encodeSavingCap,
  isSavingState,
  savingConflicts,
  savingLayoutOf,
  savingRegionCap,
} from '../../src/protocol/mmap-saving.js';

const MiB = 1n << 20n;
const einval = (e: unknown): boolean => (e instanceof ProtocolError || e instanceof InvalidArgumentError) && e.errno === 22;

/** A capability body written by hand: nr_areas, reserved, then the areas. */
function body(nr: number, areas: [bigint, bigint][], reserved = 0): Uint8Array {
  const out = new Uint8Array(8 + 16 * areas.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, nr, true);
  v.setUint32(4, reserved, true);
  areas.forEach(([o, s], i) => {
    v.setBigUint64(8 + 16 * i, o, true);
    v.setBigUint64(16 + 16 * i, s, true);
  });
  return out;
}

function mmapsBytes(entries: [number, number, bigint, bigint][]): Uint8Array {
  const out = new Uint8Array(CLIENT_MMAP_SIZE * entries.length);
  const v = new DataView(out.buffer);
  entries.forEach(([region, pad, offset, size], i) => {
    v.setUint32(24 * i, region, true);
    v.setUint32(24 * i + 4, pad, true);
    v.setBigUint64(24 * i + 8, offset, true);
    v.setBigUint64(24 * i + 16, size, true);
  });
  return out;
}

describe('SPARSE_MMAP_SAVING capability', () => {
  it('encodes the SPARSE_MMAP body layout and decodes it back', () => {
    const areas = [{ offset: 0n, size: 0x1000n }, { offset: 0x4000n, size: 0x2000n }];
    const bytes = encodeSavingCap(areas, MiB);
    assert.deepEqual(bytes, body(2, [[0n, 0x1000n], [0x4000n, 0x2000n]]));
    assert.deepEqual(decodeSavingCap(bytes, MiB), areas);
  });

  it('an empty layout (nothing stays mapped while saving) is valid', () => {
    assert.deepEqual(encodeSavingCap([], MiB), body(0, []));
    assert.deepEqual(decodeSavingCap(body(0, []), MiB), []);
  });

  it('ignores reserved and trailing bytes', () => {
    const b = new Uint8Array([...body(1, [[0n, 0x1000n]], 0xdead), 1, 2, 3]);
    assert.deepEqual(decodeSavingCap(b, MiB), [{ offset: 0n, size: 0x1000n }]);
  });

  it('travels in a region-info chain after the sparse-mmap cap and is found there', () => {
    const info = {
      argsz: 0, flags: RegionInfoFlags.READ | RegionInfoFlags.MMAP | RegionInfoFlags.CAPS, index: 0, capOffset: 32, size: MiB, offset: 0n,
      caps: [{ kind: 'sparse-mmap' as const, version: 1, areas: [{ offset: 0n, size: MiB }] }, savingRegionCap([{ offset: 0x1000n, size: 0x1000n }], MiB)],
    };
    const decoded = decodeRegionInfo(encodeRegionInfo(info));
    assert.equal(decoded.caps[1]?.kind, 'unknown');
    assert.equal(decoded.caps[1]?.kind === 'unknown' && decoded.caps[1].id, SPARSE_MMAP_SAVING_CAP_ID);
    assert.deepEqual(savingLayoutOf(decoded), [{ offset: 0x1000n, size: 0x1000n }]);
    assert.equal(savingLayoutOf({ ...decoded, caps: decoded.caps.slice(0, 1) }), undefined);
    assert.throws(() => savingLayoutOf({ ...decoded, caps: [decoded.caps[1]!, decoded.caps[1]!] }), einval, 'two saving caps');
  });

  it('refuses hostile bodies with EINVAL', () => {
    const cases: [string, Uint8Array][] = [
      ['truncated header', new Uint8Array(4)],
      ['count over the limit (no allocation)', body(0xffff_ffff, [])],
      ['count just over the limit', body(MAX_SAVING_AREAS + 1, Array.from({ length: MAX_SAVING_AREAS + 1 }, (_, i) => [BigInt(i) * 0x1000n, 0x1000n] as [bigint, bigint]))],
      ['count larger than the areas present', body(3, [[0n, 0x1000n]])],
      ['overlapping areas', body(2, [[0n, 0x2000n], [0x1000n, 0x1000n]])],
      ['unsorted areas', body(2, [[0x4000n, 0x1000n], [0n, 0x1000n]])],
      ['an empty area', body(1, [[0n, 0n]])],
      ['an area past the region', body(1, [[MiB - 0x1000n, 0x2000n]])],
      ['a huge offset', body(1, [[0xffff_ffff_ffff_f000n, 0x1000n]])],
      ['a huge size', body(1, [[0n, 0xffff_ffff_ffff_ffffn]])],
    ];
    for (const [what, b] of cases) assert.throws(() => decodeSavingCap(b, MiB), einval, what);
  });

  it('refuses to encode what it would refuse to decode', () => {
    assert.throws(() => encodeSavingCap([{ offset: 0x1000n, size: 0x1000n }, { offset: 0n, size: 0x1000n }], MiB), einval);
    assert.throws(() => encodeSavingCap([{ offset: 0n, size: 2n * MiB }], MiB), einval);
    assert.throws(() => encodeSavingCap(Array.from({ length: MAX_SAVING_AREAS + 1 }, (_, i) => ({ offset: BigInt(i), size: 1n })), 1n << 40n), einval);
  });
});

describe('x-client-mmaps data', () => {
  it('encodes {u32 region, u32 pad, u64 offset, u64 size} and decodes it back', () => {
    const mmaps = [{ region: 0, offset: 0n, size: 0x1000n }, { region: 2, offset: 0x10000n, size: 0x4000n }];
    const bytes = encodeClientMmaps(mmaps);
    assert.deepEqual(bytes, mmapsBytes([[0, 0, 0n, 0x1000n], [2, 0, 0x10000n, 0x4000n]]));
    assert.deepEqual(decodeClientMmaps(bytes), mmaps);
    assert.deepEqual(decodeClientMmaps(new Uint8Array(0)), []);
  });

  it('refuses hostile data with EINVAL', () => {
    const cases: [string, Uint8Array][] = [
      ['not a multiple of 24', new Uint8Array(25)],
      ['over the count limit', new Uint8Array(CLIENT_MMAP_SIZE * (MAX_CLIENT_MMAPS + 1))],
      ['pad not zero', mmapsBytes([[0, 1, 0n, 0x1000n]])],
      ['empty mapping', mmapsBytes([[0, 0, 0x1000n, 0n]])],
      ['wraps past 2^64', mmapsBytes([[0, 0, 0xffff_ffff_ffff_f000n, 0x2000n]])],
    ];
    for (const [what, b] of cases) assert.throws(() => decodeClientMmaps(b), einval, what);
    assert.throws(() => encodeClientMmaps([{ region: -1, offset: 0n, size: 1n }]), einval);
    assert.throws(() => encodeClientMmaps([{ region: 0, offset: 0n, size: 0n }]), einval);
    assert.throws(() => encodeClientMmaps(Array.from({ length: MAX_CLIENT_MMAPS + 1 }, () => ({ region: 0, offset: 0n, size: 1n }))), einval);
  });

  it('a mapping ending exactly at 2^64 is accepted', () => {
    const m = [{ region: 1, offset: 0xffff_ffff_ffff_f000n, size: 0x1000n }];
    assert.deepEqual(decodeClientMmaps(encodeClientMmaps(m)), m);
  });
});

describe('savingConflicts', () => {
  const layouts = new Map([[0, [{ offset: 0n, size: 0x2000n }, { offset: 0x8000n, size: 0x1000n }]], [2, []]]);

  it('a mapping conflicts unless it lies entirely inside one saving area of its region', () => {
    const declared = [
      { region: 0, offset: 0n, size: 0x2000n }, // exactly an area: fine
      { region: 0, offset: 0x1000n, size: 0x1000n }, // inside: fine
      { region: 0, offset: 0x1000n, size: 0x8000n }, // spans two areas and the gap between: conflict
      { region: 0, offset: 0x4000n, size: 0x1000n }, // in the gap: conflict
      { region: 2, offset: 0n, size: 0x1000n }, // empty layout: everything conflicts
      { region: 1, offset: 0n, size: 0x100000n }, // no saving layout: keeps its runtime layout
    ];
    const conflicts = savingConflicts(declared, layouts);
    assert.deepEqual(conflicts.map((c) => c.index), [2, 3, 4]);
    assert.deepEqual(conflicts[2]?.layout, []);
    assert.deepEqual(savingConflicts(declared, (r) => layouts.get(r)).map((c) => c.index), [2, 3, 4], 'a function works as the map');
    assert.deepEqual(savingConflicts([], layouts), []);
  });

  it('the saving states are PRE_COPY, PRE_COPY_P2P and STOP_COPY', () => {
    const saving = Object.entries(MigrationState).filter(([, v]) => isSavingState(v)).map(([k]) => k).sort();
    assert.deepEqual(saving, ['PRE_COPY', 'PRE_COPY_P2P', 'STOP_COPY']);
  });
});

describe('x-client-mmaps discovery', () => {
  it('the client names the member, the server answers with its feature index, clients read only a well-formed one', () => {
    assert.deepEqual(clientMmapsRequest(), { [CLIENT_MMAPS_CAPABILITY]: {} });
    assert.equal(clientMmapsRequested({ 'x-precopy-info': {}, ...clientMmapsRequest() }), true);
    assert.equal(clientMmapsRequested({ 'x-precopy-info': {} }), false);
    assert.equal(clientMmapsRequested(undefined), false);
    assert.deepEqual(clientMmapsMember(), { 'x-client-mmaps': { feature: 0x8005 } });
    assert.equal(clientMmapsFeatureOf({ migration: { pgsize: 4096, extra: clientMmapsMember(0x9000) } }), 0x9000);
    for (const bad of [{}, { feature: -1 }, { feature: 0x10000 }, { feature: '32773' }, [], 7, null]) {
      assert.equal(clientMmapsFeatureOf({ migration: { extra: { 'x-client-mmaps': bad } } }), undefined, JSON.stringify(bad));
    }
    assert.equal(clientMmapsFeatureOf({ extra: clientMmapsMember() }), undefined, 'only inside migration');
    assert.equal(clientMmapsFeatureOf(undefined), undefined);
  });
});
