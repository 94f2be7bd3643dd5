import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, constants as fsConstants, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, IrqIndex, IrqSetFlags } from '../../src/protocol/constants.js';
import { encodeDeviceInfo } from '../../src/protocol/device.js';
import { encodeIrqSet, type IrqSet } from '../../src/protocol/irq.js';
import { createEventFd } from '../../src/native/addon.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { CommandBits, STATUS_INTERRUPT, closeAll, fired, installEventFds, withDevice } from '../support/pci-driver.js';
import { wb } from '../support/wire-builder.js';
import type { StepClient } from '../support/step-client.js';

const EINVAL = 22;
const { DATA_NONE, DATA_BOOL, DATA_EVENTFD, ACTION_MASK, ACTION_UNMASK, ACTION_TRIGGER } = IrqSetFlags;
const { INTX, MSI, MSIX, ERR, REQ } = IrqIndex;
const getInfo = encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 });
const set = (v: Partial<IrqSet> & Pick<IrqSet, 'flags' | 'index'>): Uint8Array => encodeIrqSet({ argsz: 20, start: 0, count: 1, ...v });
/** A raw vfio_irq_set, for what the encoder refuses to build. */
const raw = (flags: number, index: number, start: number, count: number, data: number[] = [], argsz = 20): Uint8Array =>
  wb().u32(argsz).u32(flags).u32(index).u32(start).u32(count).bytes(data).build();

const trigger = (client: StepClient, index: number, start: number, count: number): Promise<unknown> =>
  client.ok(Command.DEVICE_SET_IRQS, set({ flags: DATA_NONE | ACTION_TRIGGER, index, start, count }));

describe('DEVICE_SET_IRQS validation', () => {
  const rows: { name: string; payload: Uint8Array; fds?: number }[] = [
    { name: 'no DATA bit', payload: raw(ACTION_TRIGGER, MSIX, 0, 1) },
    { name: 'two DATA bits', payload: raw(DATA_NONE | DATA_BOOL | ACTION_TRIGGER, MSIX, 0, 1, [1]) },
    { name: 'no ACTION bit', payload: raw(DATA_NONE, MSIX, 0, 1) },
    { name: 'two ACTION bits', payload: raw(DATA_NONE | ACTION_MASK | ACTION_UNMASK, MSIX, 0, 1) },
    { name: 'index 5', payload: raw(DATA_NONE | ACTION_TRIGGER, 5, 0, 1) },
    { name: 'start ≥ the index count', payload: raw(DATA_NONE | ACTION_TRIGGER, MSIX, 8, 1) },
    { name: 'start + count > the index count', payload: raw(DATA_NONE | ACTION_TRIGGER, MSIX, 6, 3) },
    { name: 'ERR with MASK', payload: raw(DATA_NONE | ACTION_MASK, ERR, 0, 1) },
    { name: 'REQ with UNMASK', payload: raw(DATA_NONE | ACTION_UNMASK, REQ, 0, 1) },
    { name: 'ERR with count 2', payload: raw(DATA_NONE | ACTION_TRIGGER, ERR, 0, 2) },
    { name: 'count 0 with start 1', payload: raw(DATA_NONE | ACTION_TRIGGER, MSIX, 1, 0) },
    { name: 'count 0 with EVENTFD data', payload: raw(DATA_EVENTFD | ACTION_TRIGGER, MSIX, 0, 0) },
    { name: 'count 0 with MASK', payload: raw(DATA_NONE | ACTION_MASK, MSIX, 0, 0) },
    { name: 'BOOL with short data', payload: raw(DATA_BOOL | ACTION_TRIGGER, MSIX, 0, 3, [1, 1]) },
    { name: 'BOOL with long data', payload: raw(DATA_BOOL | ACTION_TRIGGER, MSIX, 0, 1, [1, 1]) },
    { name: 'fds without DATA_EVENTFD', payload: raw(DATA_NONE | ACTION_TRIGGER, MSIX, 0, 1), fds: 1 },
    { name: 'fds with DATA_BOOL', payload: raw(DATA_BOOL | ACTION_TRIGGER, MSIX, 0, 1, [1]), fds: 1 },
    { name: 'fewer fds than count', payload: raw(DATA_EVENTFD | ACTION_TRIGGER, MSIX, 0, 3), fds: 2 },
    { name: 'more fds than count', payload: raw(DATA_EVENTFD | ACTION_TRIGGER, MSIX, 0, 1), fds: 2 },
    { name: 'argsz 19', payload: raw(DATA_NONE | ACTION_TRIGGER, MSIX, 0, 1, [], 19) },
    { name: 'a 16-byte payload', payload: wb().u32(20).u32(DATA_NONE | ACTION_TRIGGER).u32(MSIX).u32(0).build() },
    { name: 'MSI start 4 (4 vectors)', payload: raw(DATA_NONE | ACTION_TRIGGER, MSI, 4, 1) },
  ];
  for (const row of rows) {
    it(`refuses ${row.name} with EINVAL, closes the fds, keeps serving`, (t) =>
      assertNoFdLeak(() =>
        withDevice(t, async ({ served, client }) => {
          const fds = Array.from({ length: row.fds ?? 0 }, () => createEventFd());
          try {
            await client.fails(Command.DEVICE_SET_IRQS, row.payload, EINVAL, fds);
          } finally {
            closeAll(fds);
          }
          for (let v = 0; v < 8; v++) assert.equal(served.device.irqs.hasEventFd(MSIX, v), false, 'nothing was installed');
          await client.ok(Command.DEVICE_GET_INFO, getInfo);
        }),
      ));
  }

  it('refuses SET_IRQS on an index the device does not have (count 0), even count 0 TRIGGER|NONE', (t) =>
    withDevice(
      t,
      async ({ client }) => {
        await client.fails(Command.DEVICE_SET_IRQS, raw(DATA_NONE | ACTION_TRIGGER, MSIX, 0, 0), EINVAL);
        await client.fails(Command.DEVICE_SET_IRQS, raw(DATA_NONE | ACTION_TRIGGER, INTX, 0, 1), EINVAL);
      },
      { pci: { vendorId: 1, deviceId: 2, classCode: 0 } },
    ));
});

describe('DEVICE_SET_IRQS semantics', () => {
  it('MSI-X: with eventfds 0–7 installed and MSI-X enabled and unmasked, interrupt(v) signals exactly eventfd v', (t) =>
    assertNoFdLeak(() =>
      withDevice(t, async ({ served, client, driver }) => {
        const fds = await installEventFds(client, MSIX, 8);
        try {
          assert.equal(served.device.interrupt(0), false, 'MSI-X disabled and no INTx eventfd: nothing fires');
          await driver.enableMsix();
          for (let v = 0; v < 8; v++) {
            assert.equal(served.device.interrupt(v), true, `vector ${v}`);
            assert.deepEqual(fired(fds), [v]);
          }
          assert.equal(await driver.msixPending(), 0n);
        } finally {
          closeAll(fds);
        }
      }),
    ));

  it('TRIGGER|NONE is a loopback: it signals the selected eventfds', (t) =>
    withDevice(t, async ({ client }) => {
      const fds = await installEventFds(client, MSIX, 8);
      try {
        await trigger(client, MSIX, 2, 3);
        assert.deepEqual(fired(fds), [2, 3, 4]);
      } finally {
        closeAll(fds);
      }
    }));

  it('TRIGGER|BOOL signals only the vectors whose byte is non-zero', (t) =>
    withDevice(t, async ({ client }) => {
      const fds = await installEventFds(client, MSIX, 8);
      try {
        await client.ok(Command.DEVICE_SET_IRQS, set({ flags: DATA_BOOL | ACTION_TRIGGER, index: MSIX, start: 1, count: 4, data: Uint8Array.of(1, 0, 0, 0xff) }));
        assert.deepEqual(fired(fds), [1, 4]);
      } finally {
        closeAll(fds);
      }
    }));

  it('installs for a sub-range, and replacing eventfds closes the old ones', (t) =>
    assertNoFdLeak(() =>
      withDevice(t, async ({ served, client }) => {
        const old = await installEventFds(client, MSIX, 2, 3);
        const fresh = await installEventFds(client, MSIX, 2, 3);
        try {
          assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map((v) => served.device.irqs.hasEventFd(MSIX, v)), [false, false, false, true, true, false, false, false]);
          await trigger(client, MSIX, 3, 2);
          assert.deepEqual(fired(fresh), [0, 1]);
          assert.deepEqual(fired(old), []);
        } finally {
          closeAll([...old, ...fresh]);
        }
      }),
    ));

  it('EVENTFD with 0 fds disables exactly [start, start+count) (not libvfio-user\'s [start, count))', (t) =>
    assertNoFdLeak(() =>
      withDevice(t, async ({ served, client }) => {
        const fds = await installEventFds(client, MSIX, 8);
        try {
          await client.ok(Command.DEVICE_SET_IRQS, set({ flags: DATA_EVENTFD | ACTION_TRIGGER, index: MSIX, start: 2, count: 4 }));
          assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map((v) => served.device.irqs.hasEventFd(MSIX, v)), [true, true, false, false, false, false, true, true]);
          await trigger(client, MSIX, 0, 8);
          assert.deepEqual(fired(fds), [0, 1, 6, 7]);
        } finally {
          closeAll(fds);
        }
      }),
    ));

  it('count 0 TRIGGER|NONE disables every eventfd of the index', (t) =>
    assertNoFdLeak(() =>
      withDevice(t, async ({ served, client }) => {
        const fds = await installEventFds(client, MSIX, 8);
        const intx = await installEventFds(client, INTX, 1);
        try {
          await client.ok(Command.DEVICE_SET_IRQS, set({ flags: DATA_NONE | ACTION_TRIGGER, index: MSIX, count: 0 }));
          for (let v = 0; v < 8; v++) assert.equal(served.device.irqs.hasEventFd(MSIX, v), false);
          assert.equal(served.device.irqs.hasEventFd(INTX, 0), true, 'other indexes are untouched');
          await trigger(client, MSIX, 0, 8);
          assert.deepEqual(fired(fds), []);
        } finally {
          closeAll([...fds, ...intx]);
        }
      }),
    ));

  it('MASK holds an interrupt pending (PBA bit set), UNMASK delivers it', (t) =>
    withDevice(t, async ({ served, client, driver }) => {
      const fds = await installEventFds(client, MSIX, 8);
      try {
        await driver.enableMsix();
        await client.ok(Command.DEVICE_SET_IRQS, set({ flags: DATA_NONE | ACTION_MASK, index: MSIX, start: 3 }));
        assert.equal(served.device.interrupt(3), false);
        assert.deepEqual(fired(fds), []);
        assert.equal(await driver.msixPending(), 1n << 3n);
        assert.equal(served.device.interrupt(4), true, 'other vectors still fire');
        assert.deepEqual(fired(fds), [4]);
        await client.ok(Command.DEVICE_SET_IRQS, set({ flags: DATA_NONE | ACTION_UNMASK, index: MSIX, start: 3 }));
        assert.deepEqual(fired(fds), [3]);
        assert.equal(await driver.msixPending(), 0n);
        // BOOL selects which vectors to mask
        await client.ok(Command.DEVICE_SET_IRQS, set({ flags: DATA_BOOL | ACTION_MASK, index: MSIX, start: 0, count: 2, data: Uint8Array.of(0, 1) }));
        served.device.interrupt(0);
        served.device.interrupt(1);
        assert.deepEqual(fired(fds), [0]);
        await client.ok(Command.DEVICE_SET_IRQS, set({ flags: DATA_NONE | ACTION_UNMASK, index: MSIX, start: 0, count: 8 }));
        assert.deepEqual(fired(fds), [1]);
      } finally {
        closeAll(fds);
      }
    }));

  it('MASK/UNMASK with eventfds: the fds are not used, and are closed', (t) =>
    assertNoFdLeak(() =>
      withDevice(t, async ({ served, client }) => {
        const fds = [createEventFd(), createEventFd()];
        try {
          await client.ok(Command.DEVICE_SET_IRQS, set({ flags: DATA_EVENTFD | ACTION_MASK, index: MSIX, start: 0, count: 2 }), fds);
          assert.equal(served.device.irqs.hasEventFd(MSIX, 0), false);
        } finally {
          closeAll(fds);
        }
      }),
    ));

  it('a vector masked in the MSI-X table sets its PBA bit and fires when a table write unmasks it', (t) =>
    withDevice(t, async ({ served, client, driver }) => {
      const fds = await installEventFds(client, MSIX, 8);
      try {
        await driver.enableMsix();
        await driver.maskMsixVector(5, true);
        assert.equal(served.device.interrupt(5), false);
        assert.deepEqual(fired(fds), []);
        assert.equal(await driver.msixPending(), 1n << 5n, 'PBA read through REGION_READ of BAR4 at 0x1000');
        assert.equal(served.device.config.msix?.isPending(5), true);
        await driver.maskMsixVector(5, false);
        assert.deepEqual(fired(fds), [5]);
        assert.equal(await driver.msixPending(), 0n);
      } finally {
        closeAll(fds);
      }
    }));

  it('the MSI-X Function Mask holds every vector pending until it is cleared', (t) =>
    withDevice(t, async ({ served, client, driver }) => {
      const fds = await installEventFds(client, MSIX, 8);
      try {
        await driver.enableMsix();
        await driver.setMsix(true, true);
        assert.equal(served.device.interrupt(2), false);
        assert.equal(served.device.interrupt(6), false);
        assert.deepEqual(fired(fds), []);
        assert.equal(await driver.msixPending(), (1n << 2n) | (1n << 6n));
        await driver.setMsix(true, false);
        assert.deepEqual(fired(fds), [2, 6]);
        assert.equal(await driver.msixPending(), 0n);
      } finally {
        closeAll(fds);
      }
    }));

  it('INTx: with MSI-X off, interrupt() signals the INTx eventfd and sets Status bit 3; INTx Disable stops it', (t) =>
    withDevice(t, async ({ served, client, driver }) => {
      const [intx] = await installEventFds(client, INTX, 1);
      const msix = await installEventFds(client, MSIX, 8);
      try {
        assert.equal((await driver.config16(0x06)) & STATUS_INTERRUPT, 0);
        assert.equal(served.device.interrupt(), true);
        assert.deepEqual(fired([intx as number, ...msix]), [0]);
        assert.equal((await driver.config16(0x06)) & STATUS_INTERRUPT, STATUS_INTERRUPT);
        await driver.setCommand(CommandBits.INTX_DISABLE);
        assert.equal(served.device.interrupt(), false);
        assert.deepEqual(fired([intx as number, ...msix]), []);
        await driver.setCommand(0);
        assert.equal(served.device.interrupt(), true);
        assert.deepEqual(fired([intx as number]), [0]);
      } finally {
        closeAll([intx as number, ...msix]);
      }
    }));

  it('MSI: interrupt(v) signals MSI eventfd v for the allocated vectors only', (t) =>
    withDevice(t, async ({ served, client, driver }) => {
      const fds = await installEventFds(client, MSI, 4);
      try {
        await driver.enableMsi(1); // 2 vectors
        assert.equal(served.device.interrupt(1), true);
        assert.deepEqual(fired(fds), [1]);
        assert.equal(served.device.interrupt(2), false, 'vector 2 is not allocated');
        assert.deepEqual(fired(fds), []);
      } finally {
        closeAll(fds);
      }
    }));

  it('MSI: a vector masked by its Mask Bit sets its Pending Bit and fires when the driver clears the mask', (t) =>
    withDevice(t, async ({ served, client, driver }) => {
      const fds = await installEventFds(client, MSI, 4);
      try {
        const cap = await driver.enableMsi(2); // 4 vectors; 64-bit with per-vector masking: Mask Bits at +16, Pending Bits at +20
        await driver.setConfig32(cap + 16, 0b0100);
        assert.equal(served.device.interrupt(2), false);
        assert.deepEqual(fired(fds), []);
        assert.equal(await driver.config32(cap + 20), 0b0100);
        await driver.setConfig32(cap + 16, 0);
        assert.deepEqual(fired(fds), [2]);
        assert.equal(await driver.config32(cap + 20), 0);
      } finally {
        closeAll(fds);
      }
    }));

  it('INTx: MASK holds the interrupt, UNMASK delivers it', (t) =>
    withDevice(t, async ({ served, client }) => {
      const fds = await installEventFds(client, INTX, 1);
      try {
        await client.ok(Command.DEVICE_SET_IRQS, set({ flags: DATA_NONE | ACTION_MASK, index: INTX }));
        assert.equal(served.device.interrupt(), false);
        assert.deepEqual(fired(fds), []);
        await client.ok(Command.DEVICE_SET_IRQS, set({ flags: DATA_NONE | ACTION_UNMASK, index: INTX }));
        assert.deepEqual(fired(fds), [0]);
      } finally {
        closeAll(fds);
      }
    }));

  it('ERR and REQ: reportError() and requestRelease() signal their eventfds', (t) =>
    withDevice(t, async ({ served, client }) => {
      const [err] = await installEventFds(client, ERR, 1);
      const [req] = await installEventFds(client, REQ, 1);
      try {
        assert.equal(served.device.reportError(), true);
        assert.deepEqual(fired([err as number, req as number]), [0]);
        assert.equal(served.device.requestRelease(), true);
        assert.deepEqual(fired([err as number, req as number]), [1]);
      } finally {
        closeAll([err as number, req as number]);
      }
    }));

  it('the client\'s eventfds are closed by the server when the session ends', (t) =>
    assertNoFdLeak(async () => {
      let fds: number[] = [];
      await withDevice(t, async ({ client }) => {
        fds = await installEventFds(client, MSIX, 8);
      });
      closeAll(fds);
    }));
});

describe('DEVICE_SET_IRQS with a pipe as "eventfd"', () => {
  /** A named FIFO, opened at both ends non-blocking (the write end is what the server gets). */
  function fifo(): { read: number; write: number; done(): void } {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-fifo-'));
    const path = join(dir, 'irq');
    execFileSync('mkfifo', [path]);
    const read = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
    const write = openSync(path, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK);
    return { read, write, done: () => rmSync(dir, { recursive: true, force: true }) };
  }

  it('receives the 8-byte counter writes; a full pipe or a closed read end never blocks or kills the server', (t) =>
    assertNoFdLeak(() =>
      withDevice(t, async ({ served, client }) => {
        const p = fifo();
        let readOpen = true;
        try {
          await client.ok(Command.DEVICE_SET_IRQS, set({ flags: DATA_EVENTFD | ACTION_TRIGGER, index: ERR }), [p.write]);
          closeSync(p.write);
          assert.equal(served.device.reportError(), true);
          const buf = Buffer.alloc(16);
          assert.equal(readSync(p.read, buf), 8);
          assert.equal(buf.readBigUInt64LE(0), 1n);
          let ok = 0;
          while (served.device.reportError()) ok++; // fills the pipe: EAGAIN, not a blocked server
          assert.ok(ok > 0 && ok < 1 << 20, `${ok} writes fit in the pipe`);
          await client.ok(Command.DEVICE_GET_INFO, getInfo);
          closeSync(p.read);
          readOpen = false;
          assert.equal(served.device.reportError(), false, 'EPIPE is reported as not signalled');
          await trigger(client, ERR, 0, 1);
          await client.ok(Command.DEVICE_GET_INFO, getInfo);
        } finally {
          if (readOpen) closeSync(p.read);
          p.done();
        }
      }),
    ));

  it('refuses a pipe whose read end is already closed (EINVAL) and keeps serving', (t) =>
    assertNoFdLeak(() =>
      withDevice(t, async ({ served, client }) => {
        const p = fifo();
        closeSync(p.read);
        try {
          await client.fails(Command.DEVICE_SET_IRQS, set({ flags: DATA_EVENTFD | ACTION_TRIGGER, index: ERR }), EINVAL, [p.write]);
          assert.equal(served.device.irqs.hasEventFd(ERR, 0), false);
          await client.ok(Command.DEVICE_GET_INFO, getInfo);
        } finally {
          closeSync(p.write);
          p.done();
        }
      }),
    ));

  it('a dead pipe among several fds closes all of them and installs none', (t) =>
    assertNoFdLeak(() =>
      withDevice(t, async ({ served, client }) => {
        const p = fifo();
        closeSync(p.read);
        const a = createEventFd();
        const b = createEventFd();
        try {
          await client.fails(Command.DEVICE_SET_IRQS, set({ flags: DATA_EVENTFD | ACTION_TRIGGER, index: MSIX, count: 3 }), EINVAL, [a, p.write, b]);
          for (let v = 0; v < 3; v++) assert.equal(served.device.irqs.hasEventFd(MSIX, v), false);
          await client.ok(Command.DEVICE_GET_INFO, getInfo);
        } finally {
          closeAll([a, b, p.write]);
          p.done();
        }
      }),
    ));

  it('a blocking socket given as "eventfd" is refused with EINVAL, so it can never block the server', () => {
    // Run in a child process: if signalling blocks, it is the child that hangs (and is killed), not the test run.
    const at = (p: string): string => JSON.stringify(new URL(p, import.meta.url).href);
    const script = `
      import { createDevice } from ${at('../../src/device/device.js')};
      import { testDeviceDefinition } from ${at('../support/server-fixture.js')};
      import { StepClient } from ${at('../support/step-client.js')};
      import { native, socketPair } from ${at('../../src/native/addon.js')};
      import { encodeIrqSet } from ${at('../../src/protocol/irq.js')};
      import { mkdtempSync, rmSync } from 'node:fs';
      import { tmpdir } from 'node:os';
      import { join } from 'node:path';
      const dir = mkdtempSync(join(tmpdir(), 'vfio-user-block-'));
      const device = createDevice(testDeviceDefinition());
      const server = device.serve({ path: join(dir, 'd.sock') });
      const { client } = await StepClient.open(join(dir, 'd.sock'));
      const [mine, peer] = socketPair();
      if (native.ioctl(mine, 0x5421 /* FIONBIO */, new Uint8Array(4)) !== 0) throw new Error('FIONBIO');
      await client.fails(${Command.DEVICE_SET_IRQS}, encodeIrqSet({ argsz: 20, flags: ${DATA_EVENTFD | ACTION_TRIGGER}, index: ${ERR}, start: 0, count: 1 }), 22, [mine]);
      native.close(mine);
      let n = 0;
      while (n < 100000 && device.reportError()) n++;
      console.log('signalled ' + n + ' times, then refused');
      if (n !== 0) throw new Error('a refused fd was installed');
      client.close();
      await server.close();
      device.dispose();
      native.close(peer);
      rmSync(dir, { recursive: true, force: true });
    `;
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 5000 });
    assert.equal(child.signal, null, 'the server process blocked in write() and had to be killed');
    assert.equal(child.status, 0, child.stderr);
    assert.match(child.stdout, /then refused/);
  });
});
