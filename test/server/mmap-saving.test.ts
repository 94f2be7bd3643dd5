/**
 * SPARSE_MMAP_SAVING and x-client-mmaps on our server (docs/protocol-extensions.md §9–§10), with a raw client:
 * discovery (only to a client that names the extension; never to QEMU's exact VERSION), the capability in
 * GET_REGION_INFO (argsz retry included), declarations (GET/SET/PROBE, hostile payloads refused EINVAL with no
 * side effect, no fd left open), MIG_STATE into PRE_COPY / PRE_COPY_P2P / STOP_COPY refused EBUSY while a
 * declared mapping conflicts (logged, naming it) and allowed once it is dropped, the presumption for a client
 * that cannot declare, and the device definition's validation.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createDevice } from '../../src/device/device.js';
import type { DeviceDefinition } from '../../src/device/types.js';
import { createJsonLogger } from '../../src/log.js';
import { createEventFd, native } from '../../src/native/addon.js';
import { Command, DeviceFeature, DeviceFeatureFlags, HeaderFlags, MigrationState as S } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import { decodeDeviceFeature, decodeMigDeviceState, encodeDeviceFeature, encodeMigDeviceState } from '../../src/protocol/feature.js';
import { decodeRegionInfo, encodeRegionInfoRequest } from '../../src/protocol/region.js';
import { decodeVersion, encodeVersion } from '../../src/protocol/version.js';
import { ExtensionFeature, encodeDeadlineStateRequest } from '../../src/protocol/migration-extensions.js';
import {
  CLIENT_MMAP_SIZE,
  MAX_CLIENT_MMAPS,
  clientMmapsFeatureOf,
  decodeClientMmaps,
  encodeClientMmaps,
  savingLayoutOf,
  type ClientMmap,
} from '../../src/protocol/mmap-saving.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { qemuVersionRequest } from '../support/qemu-version.js';
import { serveTestDevice, testDeviceDefinition, type ServedDevice } from '../support/server-fixture.js';
import { StepClient } from '../support/step-client.js';

const { GET, SET, PROBE } = DeviceFeatureFlags;
const FEATURE = 0x8005;
const BAR2 = 2;
/** BAR2 (64 KiB, shared): the first 16 KiB stay mappable while saving. */
const SAVING = [{ offset: 0, size: 0x4000 }];

function savingDevice(lines: string[] = [], overrides: Partial<DeviceDefinition> = {}): DeviceDefinition {
  const base = testDeviceDefinition();
  return {
    ...base,
    regions: { ...base.regions, bar2: { size: 0x10000, type: 'mem64', prefetchable: true, shared: true, savingMmap: SAVING } },
    migration: { deviceType: 'saving-test', stateVersion: 1, preCopy: true, p2p: true, save: () => new Uint8Array(8), load: () => undefined },
    logger: createJsonLogger({ level: 'warn', write: (line) => lines.push(line) }),
    ...overrides,
  };
}

/** A raw client that names x-client-mmaps (or not) in its VERSION. */
async function open(served: ServedDevice, name = true): Promise<{ client: StepClient; feature: number | undefined }> {
  const { client, version } = await StepClient.open(served.path, { maxMsgFds: 8, ...(name ? { migration: { extra: { 'x-client-mmaps': {} } } } : {}) });
  return { client, feature: clientMmapsFeatureOf(version.capabilities) };
}

async function withServed(definition: DeviceDefinition, fn: (served: ServedDevice) => Promise<void>): Promise<void> {
  const served = serveTestDevice(definition);
  try {
    await fn(served);
  } finally {
    await served.close();
  }
}

const setState = (c: StepClient, state: number): Promise<import('../support/step-client.js').Reply> =>
  c.request(Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz: 16, flags: DeviceFeature.MIG_DEVICE_STATE | SET, data: encodeMigDeviceState({ deviceState: state, dataFd: -1 }) }));

async function state(c: StepClient): Promise<number> {
  const r = await c.ok(Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz: 16, flags: DeviceFeature.MIG_DEVICE_STATE | GET, data: new Uint8Array(8) }));
  return decodeMigDeviceState(decodeDeviceFeature(r.payload).data).deviceState;
}

const declare = (c: StepClient, mmaps: ClientMmap[] | Uint8Array, fds?: number[]): Promise<import('../support/step-client.js').Reply> => {
  const data = mmaps instanceof Uint8Array ? mmaps : encodeClientMmaps(mmaps);
  return c.request(Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz: 8 + data.length, flags: FEATURE | SET, data }), fds);
};

async function declared(c: StepClient): Promise<ClientMmap[]> {
  const r = await c.ok(Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz: 8 + 24 * 64, flags: FEATURE | GET, data: new Uint8Array(0) }));
  return decodeClientMmaps(decodeDeviceFeature(r.payload).data);
}

async function regionInfo(c: StepClient, index: number, argsz = 512): Promise<{ info: ReturnType<typeof decodeRegionInfo>; fds: number[] }> {
  const r = await c.ok(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz, index }));
  return { info: decodeRegionInfo(r.payload), fds: r.fds };
}

const closeAll = (fds: number[]): void => fds.forEach((fd) => native.close(fd));
const failed = (r: { flags: number; errorNo: number }): number => ((r.flags & HeaderFlags.ERROR) === 0 ? 0 : r.errorNo);

describe('SPARSE_MMAP_SAVING on the server', () => {
  it('is offered to a client that names it: feature in VERSION, the capability in GET_REGION_INFO (argsz retry)', async () => {
    await withServed(savingDevice(), async (served) => {
      const { client, feature } = await open(served);
      try {
        assert.equal(feature, FEATURE);
        const small = await regionInfo(client, BAR2, 32);
        assert.equal(small.fds.length, 0);
        assert.equal(small.info.argsz, 32 + 16 + 16 + 8 + 8 + 16, 'sparse cap (one area) + saving cap (one area)');
        const { info, fds } = await regionInfo(client, BAR2, small.info.argsz);
        assert.equal(fds.length, 1);
        closeAll(fds);
        assert.deepEqual(savingLayoutOf(info), [{ offset: 0n, size: 0x4000n }]);
        const other = await regionInfo(client, 0);
        assert.equal(savingLayoutOf(other.info), undefined, 'a region without a saving layout has no cap');
        closeAll(other.fds);
        for (const op of [GET, SET, GET | SET]) await client.ok(Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz: 8, flags: FEATURE | PROBE | op, data: new Uint8Array(0) }));
      } finally {
        client.close();
      }
    });
  });

  it('a declared mapping outside the saving layout: PRE_COPY, PRE_COPY_P2P, STOP_COPY refused EBUSY (logged); allowed once dropped', async () => {
    const lines: string[] = [];
    await withServed(savingDevice(lines), async (served) => {
      const { client } = await open(served);
      try {
        closeAll((await regionInfo(client, BAR2)).fds);
        const inside = { region: BAR2, offset: 0n, size: 0x4000n };
        const outside = { region: BAR2, offset: 0x4000n, size: 0xc000n };
        assert.equal(failed(await declare(client, [inside, outside])), 0);
        assert.deepEqual(await declared(client), [inside, outside]);
        for (const target of [S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY]) {
          assert.equal(failed(await setState(client, target)), Errno.EBUSY, `target ${target}`);
          assert.equal(await state(client), S.RUNNING, 'nothing moved');
        }
        const logged = lines.map((l) => JSON.parse(l) as { msg: string }).filter((l) => /refused \(EBUSY\)/.test(l.msg));
        assert.equal(logged.length, 3);
        assert.match(logged[0]?.msg ?? '', /PRE_COPY refused \(EBUSY\): the client declares mapping region 2 0x4000\+0xc000 outside/);
        assert.equal(failed(await setState(client, S.STOP)), 0, 'a non-saving target is not affected');
        assert.equal(failed(await setState(client, S.RUNNING)), 0);
        // Dropped: the transition goes through.
        assert.equal(failed(await declare(client, [inside])), 0);
        assert.equal(failed(await setState(client, S.PRE_COPY)), 0);
        // While saving, a declaration that would add a conflicting mapping is refused and changes nothing.
        assert.equal(failed(await declare(client, [inside, outside])), Errno.EBUSY);
        assert.deepEqual(await declared(client), [inside]);
        assert.equal(failed(await declare(client, [])), 0, 'shrinking is fine while saving');
        assert.equal(failed(await setState(client, S.STOP_COPY)), 0);
        assert.equal(await state(client), S.STOP_COPY);
      } finally {
        client.close();
      }
    });
  });

  it('a deadline-bounded SET (x-deadline-state) into a saving state is refused EBUSY too', async () => {
    await withServed(savingDevice(), async (served) => {
      const { client, version } = await StepClient.open(served.path, { maxMsgFds: 8, migration: { extra: { 'x-client-mmaps': {}, 'x-deadline-state': {} } } });
      try {
        assert.equal(clientMmapsFeatureOf(version.capabilities), FEATURE);
        assert.equal(failed(await declare(client, [{ region: BAR2, offset: 0x8000n, size: 0x1000n }])), 0);
        const data = encodeDeadlineStateRequest({ deviceState: S.STOP_COPY, flags: 0, deadlineNs: 0n });
        const deadline = (): Promise<{ flags: number; errorNo: number }> =>
          client.request(Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz: 8 + data.length, flags: ExtensionFeature.MIG_STATE_DEADLINE | SET, data }));
        assert.equal(failed(await deadline()), Errno.EBUSY);
        assert.equal(await state(client), S.RUNNING);
        assert.equal(failed(await declare(client, [])), 0);
        assert.equal(failed(await deadline()), 0);
        assert.equal(await state(client), S.STOP_COPY);
      } finally {
        client.close();
      }
    });
  });

  it('refuses hostile declarations with EINVAL, changing nothing and leaving no fd open', async () => {
    await withServed(savingDevice(), async (served) => {
      const { client } = await open(served);
      try {
        const good = [{ region: BAR2, offset: 0x4000n, size: 0x1000n }];
        assert.equal(failed(await declare(client, good)), 0);
        const raw = (region: number, pad: number, offset: bigint, size: bigint): Uint8Array => {
          const b = new Uint8Array(CLIENT_MMAP_SIZE);
          const v = new DataView(b.buffer);
          v.setUint32(0, region, true);
          v.setUint32(4, pad, true);
          v.setBigUint64(8, offset, true);
          v.setBigUint64(16, size, true);
          return b;
        };
        const hostile: [string, Uint8Array][] = [
          ['oversize count', new Uint8Array(CLIENT_MMAP_SIZE * (MAX_CLIENT_MMAPS + 1))],
          ['ragged length', new Uint8Array(CLIENT_MMAP_SIZE + 5)],
          ['pad set', raw(BAR2, 7, 0n, 0x1000n)],
          ['empty mapping', raw(BAR2, 0, 0n, 0n)],
          ['huge offset', raw(BAR2, 0, 0xffff_ffff_ffff_0000n, 0x1000n)],
          ['past the region', raw(BAR2, 0, 0xf000n, 0x2000n)],
          ['no such region', raw(99, 0, 0n, 0x1000n)],
          ['a region that cannot be mmapped (callbacks only)', raw(0, 0, 0n, 0x1000n)],
        ];
        await assertNoFdLeak(async () => {
          for (const [what, data] of hostile) assert.equal(failed(await declare(client, data)), Errno.EINVAL, what);
          const fd = createEventFd();
          try {
            assert.equal(failed(await declare(client, [], [fd])), Errno.EINVAL, 'an fd');
          } finally {
            native.close(fd);
          }
        });
        assert.deepEqual(await declared(client), good, 'no refused declaration changed anything');
        // GET with too small an argsz is answered with the size needed.
        const r = await client.ok(Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz: 8, flags: FEATURE | GET, data: new Uint8Array(0) }));
        assert.equal(decodeDeviceFeature(r.payload).argsz, 8 + 24);
      } finally {
        client.close();
      }
    });
  });

  it('a client that does not name it gets no member, no capability, no feature; given the fd it is presumed to map', async () => {
    await withServed(savingDevice(), async (served) => {
      const { client, feature } = await open(served, false);
      try {
        assert.equal(feature, undefined);
        assert.equal(failed(await setState(client, S.PRE_COPY)), 0, 'no region fd given yet: nothing presumed');
        assert.equal(failed(await setState(client, S.RUNNING)), 0);
        const { info, fds } = await regionInfo(client, BAR2);
        closeAll(fds);
        assert.equal(fds.length, 1);
        assert.deepEqual(info.caps.map((c) => c.kind), ['sparse-mmap']);
        assert.equal(failed(await declare(client, [])), Errno.EINVAL, 'the feature is not offered');
        assert.equal(failed(await setState(client, S.STOP_COPY)), Errno.EBUSY, 'presumed to map all of BAR2');
      } finally {
        client.close();
      }
    });
  });

  it('a short VERSION request whose reply must give up the member: no capability, the client cannot declare', async () => {
    await withServed(savingDevice(), async (served) => {
      const client = await StepClient.connect(served.path);
      try {
        const reply = await client.ok(Command.VERSION, encodeVersion({ major: 0, minor: 2, capabilities: { maxMsgFds: 8, migration: { extra: { 'x-client-mmaps': {} } } } }));
        assert.equal(clientMmapsFeatureOf(decodeVersion(reply.payload).capabilities), undefined, 'given up to fit the request');
        const { info, fds } = await regionInfo(client, BAR2);
        closeAll(fds);
        assert.deepEqual(info.caps.map((c) => c.kind), ['sparse-mmap']);
        assert.equal(failed(await declare(client, [])), Errno.EINVAL);
        assert.equal(failed(await setState(client, S.PRE_COPY)), Errno.EBUSY, 'presumed to map what it was given');
      } finally {
        client.close();
      }
    });
  });

  it("QEMU's exact VERSION gets neither the member nor the capability", async () => {
    await withServed(savingDevice(), async (served) => {
      const client = await StepClient.connect(served.path);
      try {
        const reply = await client.ok(Command.VERSION, qemuVersionRequest());
        assert.equal(clientMmapsFeatureOf(decodeVersion(reply.payload).capabilities), undefined);
        const { info, fds } = await regionInfo(client, BAR2);
        closeAll(fds);
        assert.deepEqual(info.caps.map((c) => c.kind), ['sparse-mmap']);
      } finally {
        client.close();
      }
    });
  });

  it('a transition with no conflicting mapping is allowed (a region without a saving layout keeps its runtime layout)', async () => {
    await withServed(savingDevice(), async (served) => {
      const { client } = await open(served);
      try {
        assert.equal(failed(await setState(client, S.STOP_COPY)), 0, 'nothing declared');
      } finally {
        client.close();
      }
    });
  });
});

describe('savingMmap in a device definition', () => {
  const bar2 = (savingMmap: unknown, shared: unknown = true): Partial<DeviceDefinition> => {
    const base = testDeviceDefinition();
    return { regions: { ...base.regions, bar2: { size: 0x10000, shared, savingMmap } as never } };
  };

  it('is validated before anything is allocated (EINVAL naming the rule)', async () => {
    const cases: [string, Partial<DeviceDefinition>, RegExp][] = [
      ['not shared', bar2(SAVING, false), /needs a shared region/],
      ['not migratable', { ...bar2(SAVING), migration: undefined }, /needs a migratable device/],
      ['unaligned', bar2([{ offset: 0x800, size: 0x1000 }]), /page-aligned/],
      ['overlapping', bar2([{ offset: 0, size: 0x2000 }, { offset: 0x1000, size: 0x1000 }]), /overlaps/],
      ['unsorted', bar2([{ offset: 0x4000, size: 0x1000 }, { offset: 0, size: 0x1000 }]), /not sorted/],
      ['past the region', bar2([{ offset: 0, size: 0x20000 }]), /past the region/],
      ['not an array', bar2({ offset: 0, size: 0x1000 }), /array/],
      ['outside the runtime sparse areas', bar2([{ offset: 0x8000, size: 0x1000 }], { sparse: [{ offset: 0, size: 0x4000 }] }), /not inside one runtime sparse area/],
    ];
    await assertNoFdLeak(() => {
      for (const [what, overrides, message] of cases) {
        assert.throws(() => createDevice(savingDevice([], overrides)), (e: Error & { errno?: number }) => e.errno === Errno.EINVAL && message.test(e.message), what);
      }
    });
  });

  it('an empty layout is valid: nothing stays mappable while saving', async () => {
    await withServed(savingDevice([], bar2([])), async (served) => {
      const { client } = await open(served);
      try {
        const { info, fds } = await regionInfo(client, BAR2);
        closeAll(fds);
        assert.deepEqual(savingLayoutOf(info), []);
        assert.equal(failed(await declare(client, [{ region: BAR2, offset: 0n, size: 0x1000n }])), 0);
        assert.equal(failed(await setState(client, S.STOP_COPY)), Errno.EBUSY);
      } finally {
        client.close();
      }
    });
  });
});
