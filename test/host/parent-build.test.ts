/**
 * buildInstance: create, then attributes applied in order; any failure rolls
 * the instance back (the parent's dispose and the device's ran, nothing was
 * served, later attributes never ran) and throws one error naming the step
 * with its errno.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { describe, it } from 'node:test';
import { createDevice, type VfioUserDevice } from '../../src/device/device.js';
import { VfioUserError } from '../../src/errors.js';
import { buildInstance } from '../../src/host/instance-build.js';
import { validateParent } from '../../src/host/parent-validate.js';
import type { MdevAttr, MdevCreateContext, MdevCreated, MdevInstanceHandle, MdevParent } from '../../src/host/types.js';
import { Errno } from '../../src/protocol/errno.js';
import { assertNoFdLeak } from '../support/fd-count.js';

const UUID = '0b6e3a1c-7a8e-4c0b-9d7a-2f5d9a7e1c42';

/** What a test parent saw and did. */
interface Journal {
  calls: string[];
  devices: VfioUserDevice[];
}

/** A device that records its dispose and any attempt to serve it. */
function trackedDevice(journal: Journal): VfioUserDevice {
  const device = createDevice({ name: 'tracked', pci: { vendorId: 0x1234, deviceId: 0x0042, classCode: 0xff0000 }, regions: { bar0: { size: 4096, shared: true } } });
  const dispose = device.dispose.bind(device);
  device.dispose = () => {
    journal.calls.push('device.dispose');
    dispose();
  };
  device.serve = () => assert.fail('a built instance is never served by buildInstance');
  journal.devices.push(device);
  return device;
}

/** A parent whose attributes record `name=value` in order, fail on `fail` values, and whose create is `made`. */
function recordingParent(journal: Journal, made?: (ctx: MdevCreateContext) => MdevCreated | Promise<MdevCreated>): MdevParent {
  const attribute = (name: string) => ({
    apply: async (instance: MdevInstanceHandle, value: string) => {
      journal.calls.push(`${name}=${value}`);
      await Promise.resolve();
      if (value === 'busy') throw new VfioUserError('the slot is busy', { errno: Errno.EBUSY });
      if (value === 'plain') throw new Error('plain failure\nwith a second line');
      if (value === 'enoent') throw Object.assign(new Error('ENOENT: no such file'), { errno: -2, code: 'ENOENT' });
      assert.equal(instance.uuid, UUID);
      assert.equal((instance.state as { tag?: string } | undefined)?.tag, 'state-of-create');
    },
  });
  return validateParent(
    {
      name: 'rec',
      types: [
        {
          name: 't',
          maxInstances: 4,
          attributes: { a: attribute('a'), b: attribute('b'), c: attribute('c') },
          create:
            made ??
            ((ctx: MdevCreateContext) => {
              journal.calls.push(`create ${ctx.type}`);
              return { device: trackedDevice(journal), state: { tag: 'state-of-create' }, dispose: () => void journal.calls.push('parent.dispose') };
            }),
        },
      ],
    },
    'rec',
  );
}

const context: MdevCreateContext = { uuid: UUID, parent: 'rec', type: 't', socket: `/tmp/vfio-user-parent-build-${process.pid}.sock` };

async function refusal(promise: Promise<unknown>, code: string, message: string | RegExp): Promise<VfioUserError> {
  const error = await promise.then(
    () => assert.fail('expected a refusal'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof VfioUserError, String(error));
  assert.equal(error.code, code, error.message);
  if (typeof message === 'string') assert.equal(error.message, message);
  else assert.match(error.message, message);
  return error;
}

describe('buildInstance: attributes', () => {
  it('creates, then applies attributes in their order (a name may repeat)', async () => {
    const journal: Journal = { calls: [], devices: [] };
    const attrs: MdevAttr[] = [{ b: '1' }, { a: '2' }, { b: '3' }, { c: '4' }];
    const built = await buildInstance(recordingParent(journal), 't', context, attrs);
    assert.deepEqual(journal.calls, ['create t', 'b=1', 'a=2', 'b=3', 'c=4']);
    assert.equal(built.device, journal.devices[0]);
    assert.deepEqual(built.state, { tag: 'state-of-create' });
    await built.dispose();
    await built.dispose();
    assert.deepEqual(journal.calls.slice(5), ['parent.dispose', 'device.dispose'], 'dispose runs once: the parent’s, then the device’s');
  });

  it('rolls back when the second attribute fails: disposed, never served, the third never applied, errno kept', async () => {
    const journal: Journal = { calls: [], devices: [] };
    const error = await refusal(
      buildInstance(recordingParent(journal), 't', context, [{ a: 'ok' }, { b: 'busy' }, { c: 'never' }]),
      'EBUSY',
      'rec-t: attribute 1 b="busy" refused: the slot is busy',
    );
    assert.ok(error.cause instanceof VfioUserError);
    assert.deepEqual(journal.calls, ['create t', 'a=ok', 'b=busy', 'parent.dispose', 'device.dispose']);
    assert.equal(existsSync(context.socket), false, 'nothing served on the socket');
  });

  it('keeps a Node system error’s errno, and gives EINVAL (first line only) to an error without one', async () => {
    const journal: Journal = { calls: [], devices: [] };
    await refusal(buildInstance(recordingParent(journal), 't', context, [{ a: 'enoent' }]), 'ENOENT', /attribute 0 a="enoent" refused: ENOENT: no such file$/);
    await refusal(buildInstance(recordingParent(journal), 't', context, [{ a: 'x' }, { c: 'plain' }]), 'EINVAL', 'rec-t: attribute 1 c="plain" refused: plain failure');
    assert.equal(journal.calls.filter((c) => c === 'device.dispose').length, 2, 'both instances removed');
  });

  it('says so when removing the instance fails too, and still disposes the device', async () => {
    const journal: Journal = { calls: [], devices: [] };
    const parent = recordingParent(journal, () => ({
      device: trackedDevice(journal),
      state: { tag: 'state-of-create' },
      dispose: () => {
        throw new Error('release failed');
      },
    }));
    await refusal(buildInstance(parent, 't', context, [{ a: 'busy' }]), 'EBUSY', /refused: the slot is busy; removing the instance also failed: release failed$/);
    assert.deepEqual(journal.calls, ['a=busy', 'device.dispose']);
  });

  it('refuses an unknown attribute before creating anything (EINVAL), prototype names included', async () => {
    const journal: Journal = { calls: [], devices: [] };
    const parent = recordingParent(journal);
    await refusal(buildInstance(parent, 't', context, [{ a: '1' }, { d: '2' }]), 'EINVAL', 'rec-t: attribute 1 "d" is unknown (it accepts a, b, c)');
    await refusal(buildInstance(parent, 't', context, [JSON.parse('{"__proto__": "x"}') as MdevAttr]), 'EINVAL', /attribute 0 "__proto__" is unknown/);
    await refusal(buildInstance(parent, 't', context, [{ constructor: 'x' }]), 'EINVAL', /attribute 0 "constructor" is unknown/);
    assert.deepEqual(journal.calls, [], 'create never ran');
  });

  it('refuses malformed attribute entries before creating anything (EINVAL)', async () => {
    const journal: Journal = { calls: [], devices: [] };
    const parent = recordingParent(journal);
    const bad = [{}, { a: '1', b: '2' }, { a: 1 }, null, ['a', '1']] as unknown as MdevAttr[];
    for (const attr of bad) {
      await refusal(buildInstance(parent, 't', context, [attr]), 'EINVAL', 'rec-t: attribute 0 must be one name with a string value ({"name": "value"})');
    }
    assert.deepEqual(journal.calls, []);
  });
});

describe('buildInstance: create', () => {
  const parentCreating = (made: (ctx: MdevCreateContext) => unknown): MdevParent => recordingParent({ calls: [], devices: [] }, made as (ctx: MdevCreateContext) => MdevCreated);

  it('refuses a type the parent does not have (ENOENT)', async () => {
    await refusal(buildInstance(parentCreating(() => assert.fail('no create')), 'u', context, []), 'ENOENT', 'parent rec has no type u (types: t)');
  });

  it('keeps the errno of a create that throws, else EINVAL', async () => {
    await refusal(
      buildInstance(
        parentCreating(() => {
          throw new VfioUserError('out of slots', { errno: Errno.ENOMEM });
        }),
        't',
        context,
        [],
      ),
      'ENOMEM',
      `rec-t: creating instance ${UUID} failed: out of slots`,
    );
    await refusal(buildInstance(parentCreating(() => Promise.reject(new TypeError('oops'))), 't', context, []), 'EINVAL', /failed: oops$/);
  });

  it('accepts a definition, a device, or { device } from create', async () => {
    const definition = { name: 'from-definition', pci: { vendorId: 0x1234, deviceId: 0x0043, classCode: 0xff0000 }, regions: { bar0: { size: 4096 } } };
    const fromDefinition = await buildInstance(parentCreating(() => definition), 't', context, []);
    assert.equal(fromDefinition.device.name, 'from-definition');
    await fromDefinition.dispose();
    const device = createDevice(definition);
    const fromDevice = await buildInstance(parentCreating(async () => device), 't', context, []);
    assert.equal(fromDevice.device, device);
    assert.equal(fromDevice.state, undefined);
    await fromDevice.dispose();
    const wrapped = await buildInstance(parentCreating(() => ({ device: createDevice(definition) })), 't', context, []);
    await wrapped.dispose();
  });

  it('refuses what is not a device (EINVAL), disposing a device whose dispose is not a function', async () => {
    await refusal(buildInstance(parentCreating(() => 42), 't', context, []), 'EINVAL', 'rec-t: create returned neither a device, a device definition (with pci) nor { device, dispose?, state? }');
    await refusal(buildInstance(parentCreating(() => ({ pci: { vendorId: 0x1234, deviceId: 1 }, regions: { bar0: { size: 1000 } } })), 't', context, []), 'EINVAL', /create returned an invalid device definition: /);
    const journal: Journal = { calls: [], devices: [] };
    await refusal(buildInstance(parentCreating(() => ({ device: trackedDevice(journal), dispose: 'no' })), 't', context, []), 'EINVAL', 'rec-t: create returned a dispose that is not a function');
    assert.deepEqual(journal.calls, ['device.dispose']);
  });
});

describe('buildInstance: built-in parents', () => {
  it('memory-pool: fill then write, in that order, shape BAR0; the reverse order does not', async () => {
    const { parent } = await import('../../src/host/parents/memory-pool.js');
    const ctx = { ...context, parent: 'memory-pool', type: '64M' };
    const first = await buildInstance(parent, '64M', ctx, [{ fill: '0xa5' }, { write: '0x10:cafe' }]);
    const memory = first.device.regionMemory(0);
    assert.equal(memory.length, 64 << 20);
    assert.deepEqual([...memory.subarray(0x0e, 0x14)], [0xa5, 0xa5, 0xca, 0xfe, 0xa5, 0xa5]);
    assert.equal(memory[memory.length - 1], 0xa5);
    await first.dispose();
    const reversed = await buildInstance(parent, '64M', ctx, [{ write: '16:cafe' }, { fill: 'deadbeef' }]);
    assert.deepEqual([...reversed.device.regionMemory(0).subarray(0x0e, 0x14)], [0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef]);
    await reversed.dispose();
  });

  it('memory-pool: a 256M instance has 256 MiB of BAR0; bad values roll back without leaking fds', async () => {
    const { parent } = await import('../../src/host/parents/memory-pool.js');
    const big = await buildInstance(parent, '256M', { ...context, type: '256M' }, []);
    const sizeLo = await big.device.regionRead(2, 0, 4);
    assert.equal(new DataView(sizeLo.buffer, sizeLo.byteOffset, 4).getUint32(0, true), 256 << 20);
    await big.dispose();
    await assertNoFdLeak(async () => {
      await refusal(buildInstance(parent, '64M', context, [{ fill: 'a5' }, { fill: 'abc' }]), 'EINVAL', /attribute 1 fill="abc" refused: fill pattern "abc" must be 1–64 bytes in hex/);
      await refusal(buildInstance(parent, '64M', context, [{ write: `${64 << 20}:00` }]), 'EINVAL', /do not fit in BAR0/);
      await refusal(buildInstance(parent, '64M', context, [{ write: 'end:00' }]), 'EINVAL', /must be OFFSET:HEX/);
    });
  });

  it('gpio-bank: inputs drives the wired lines; the 4-line card refuses unwired ones', async () => {
    const { parent } = await import('../../src/host/parents/gpio-bank.js');
    const input = async (device: VfioUserDevice): Promise<number> => {
      const bytes = await device.regionRead(2, 0x14, 4);
      return new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
    };
    const wide = await buildInstance(parent, '16', context, [{ inputs: '0x8005' }]);
    assert.equal(await input(wide.device), 0x8005);
    await wide.dispose();
    const narrow = await buildInstance(parent, '4', context, [{ inputs: '5' }, { inputs: '0xa' }]);
    assert.equal(await input(narrow.device), 0xa, 'the later value wins');
    await narrow.dispose();
    await refusal(buildInstance(parent, '4', context, [{ inputs: '0x10' }]), 'EINVAL', /only inputs 0–3 of this card are wired \(mask at most 0xf\)/);
    await refusal(buildInstance(parent, '16', context, [{ inputs: 'high' }]), 'EINVAL', /must be a mask of input levels/);
  });

  it('gpio-bank: the 4-line card is a function of a named card (one isolation group per card); the 16-line card is not', async () => {
    const { parent } = await import('../../src/host/parents/gpio-bank.js');
    const { groupIdOf } = await import('../../src/host/groups.js');
    const narrow = parent.types.find((t) => t.name === '4');
    const wide = parent.types.find((t) => t.name === '16');
    assert.deepEqual(narrow?.group, { attr: 'card' });
    assert.equal(wide?.group, undefined);
    assert.equal(groupIdOf(parent.name, narrow, context.uuid, [{ card: 'c1' }, { inputs: '1' }]), 'gpio-bank/card=c1');
    const built = await buildInstance(parent, '4', context, [{ card: 'c1' }]);
    await built.dispose();
    await refusal(buildInstance(parent, '4', context, [{ card: 'a b' }]), 'EINVAL', /card "a b" must be 1–32 characters/);
    await refusal(buildInstance(parent, '16', context, [{ card: 'c1' }]), 'EINVAL', /attribute 0 "card" is unknown/);
  });

  it('the example parent: initial sets the counter and where a reset puts it back', async () => {
    const { default: parent } = await import('../../examples/my-parent.js');
    const built = await buildInstance(parent, 'counter', { ...context, parent: 'counters', type: 'counter' }, [{ initial: '100' }]);
    const read = async (): Promise<number> => {
      const bytes = await built.device.regionRead(0, 0, 4);
      return new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
    };
    assert.equal(await read(), 100);
    await built.device.regionWrite(0, 0, Uint8Array.of(5, 0, 0, 0));
    assert.equal(await read(), 105);
    await built.device.reset('client');
    assert.equal(await read(), 100);
    await built.dispose();
    await refusal(buildInstance(parent, 'counter', context, [{ initial: '-1' }]), 'EINVAL', /initial "-1" must be an integer/);
  });
});
