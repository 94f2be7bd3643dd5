import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, HeaderFlags, IrqIndex, IrqSetFlags } from '../../src/protocol/constants.js';
import { encodeDeviceInfo } from '../../src/protocol/device.js';
import { encodeIrqSet } from '../../src/protocol/irq.js';
import { ProtocolError } from '../../src/errors.js';
import type { ResetReason } from '../../src/device/types.js';
import { testDeviceDefinition } from '../support/server-fixture.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { Cfg, CommandBits, closeAll, fired, installEventFds, withDevice } from '../support/pci-driver.js';

const getInfo = encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 });

describe('DEVICE_RESET', () => {
  it('calls the reset hook with reason "client" and replies with an empty payload', (t) => {
    const reasons: ResetReason[] = [];
    return withDevice(
      t,
      async ({ client }) => {
        const r = await client.ok(Command.DEVICE_RESET);
        assert.equal(r.payload.length, 0);
        assert.deepEqual(reasons, ['client']);
        await client.ok(Command.DEVICE_RESET, new Uint8Array(8)); // a payload is ignored
        assert.deepEqual(reasons, ['client', 'client']);
      },
      testDeviceDefinition({ reset: (reason) => void reasons.push(reason) }),
    );
  });

  it('resets config space (Command, BARs, MSI-X) but keeps the installed eventfds', (t) =>
    assertNoFdLeak(() =>
      withDevice(t, async ({ served, client, driver }) => {
        const fds = await installEventFds(client, IrqIndex.MSIX, 8);
        try {
          await driver.enableMsix();
          await driver.setCommand(CommandBits.MEMORY | CommandBits.MASTER | CommandBits.INTX_DISABLE);
          await driver.setConfig32(Cfg.BAR0, 0xfebf0000);
          assert.equal(await driver.command(), 0x406);
          await client.ok(Command.DEVICE_RESET);
          assert.equal(await driver.command(), 0, 'Command back to 0');
          assert.equal(await driver.config32(Cfg.BAR0), 0, 'BAR0 back to 0');
          assert.equal(served.device.config.msix?.enabled, false, 'MSI-X disabled');
          assert.equal(await driver.readLe(12, 4, 4), 1, 'MSI-X entries masked again');
          for (let v = 0; v < 8; v++) assert.equal(served.device.irqs.hasEventFd(IrqIndex.MSIX, v), true, `eventfd ${v} kept`);
          await client.ok(Command.DEVICE_SET_IRQS, encodeIrqSet({ argsz: 20, flags: IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER, index: IrqIndex.MSIX, start: 0, count: 8 }));
          assert.deepEqual(fired(fds), [0, 1, 2, 3, 4, 5, 6, 7]);
          await driver.enableMsix();
          assert.equal(served.device.interrupt(4), true);
          assert.deepEqual(fired(fds), [4]);
        } finally {
          closeAll(fds);
        }
      }),
    ));

  it('drops interrupts left pending before the reset (the PBA reads 0, so nothing may fire later)', (t) =>
    withDevice(t, async ({ served, client, driver }) => {
      const fds = await installEventFds(client, IrqIndex.MSIX, 8);
      try {
        await driver.enableMsix();
        await driver.maskMsixVector(3, true);
        assert.equal(served.device.interrupt(3), false);
        assert.equal(await driver.msixPending(), 1n << 3n);
        await client.ok(Command.DEVICE_RESET);
        assert.equal(await driver.msixPending(), 0n, 'reset clears the PBA');
        await driver.enableMsix();
        assert.deepEqual(fired(fds), [], 'no stale interrupt from before the reset');
      } finally {
        closeAll(fds);
      }
    }));

  for (const [name, hook, errno] of [
    ['throws', (): void => {
      throw new Error('reset bug');
    }, 5],
    ['rejects', (): Promise<void> => Promise.reject(new TypeError('async reset bug')), 5],
    ['throws an error with an errno', (): void => {
      throw new ProtocolError('busy', { errno: 16 });
    }, 16],
    ['rejects with an errno', (): Promise<void> => Promise.reject(Object.assign(new Error('io'), { errno: 121 })), 121],
  ] as const) {
    it(`replies with errno ${errno} when the reset hook ${name}, and keeps serving`, (t) =>
      withDevice(
        t,
        async ({ client }) => {
          const r = await client.fails(Command.DEVICE_RESET, undefined, errno);
          assert.equal(r.payload.length, 0);
          await client.ok(Command.DEVICE_GET_INFO, getInfo);
        },
        testDeviceDefinition({ reset: (reason) => (reason === 'client' ? hook() : undefined) }),
      ));
  }

  it('with NO_REPLY: resets, sends nothing, and the next request is answered', (t) => {
    const reasons: ResetReason[] = [];
    return withDevice(
      t,
      async ({ client, driver }) => {
        await driver.setCommand(CommandBits.MEMORY);
        const id = client.post(Command.DEVICE_RESET, undefined, HeaderFlags.NO_REPLY);
        assert.equal(await driver.command(), 0);
        assert.deepEqual(reasons, ['client']);
        assert.ok(!client.replies.some((r) => r.msgId === id), 'no reply to the NO_REPLY reset');
      },
      testDeviceDefinition({ reset: (reason) => void reasons.push(reason) }),
    );
  });

  it('waits for an asynchronous reset hook before replying, and requests queue behind it', (t) => {
    let release!: () => void;
    const order: string[] = [];
    return withDevice(
      t,
      async ({ client }) => {
        const reset = client.request(Command.DEVICE_RESET).then(() => order.push('reset'));
        const info = client.request(Command.DEVICE_GET_INFO, getInfo).then(() => order.push('info'));
        await new Promise((r) => setTimeout(r, 20));
        assert.deepEqual(order, []);
        release();
        await Promise.all([reset, info]);
        assert.deepEqual(order, ['reset', 'info']);
      },
      testDeviceDefinition({
        reset: (reason) => (reason === 'client' ? new Promise<void>((r) => (release = r)) : undefined),
      }),
    );
  });
});
