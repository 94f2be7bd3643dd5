import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { IrqController, type InterruptState } from '../../src/device/irqs.js';
import { IrqSetFlags } from '../../src/protocol/constants.js';
import { createEventFd, native } from '../../src/native/addon.js';
import { assertNoFdLeak } from '../support/fd-count.js';

function fakeState(): InterruptState & { intxDisabledNow: boolean; status: boolean; modeNow: 'intx' | 'none' | 'msi' | 'msix' } {
  return {
    intxDisabledNow: false,
    status: false,
    modeNow: 'intx',
    mode() {
      return this.modeNow;
    },
    msixMasked: () => false,
    msiMasked: () => false,
    msiEnabledVectors: () => 1,
    intxDisabled() {
      return this.intxDisabledNow;
    },
    setMsixPending: () => {},
    setMsiPending: () => {},
    setIntxStatus(asserted: boolean) {
      this.status = asserted;
    },
    msixPending: () => false,
    msiPending: () => false,
    intxAsserted() {
      return this.status;
    },
  };
}

const drain = (fd: number): bigint | number => native.eventfdRead(fd);

/** An IRQ controller with one INTx line whose trigger is an eventfd (the caller resets the controller, which closes it). */
function intxWithEventFd(): { state: ReturnType<typeof fakeState>; irqs: IrqController; efd: number } {
  const state = fakeState();
  const irqs = new IrqController([1, 0, 0, 0, 0], state);
  const efd = createEventFd();
  irqs.apply({ argsz: 20, flags: IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, index: 0, start: 0, count: 1 }, [efd]);
  return { state, irqs, efd };
}

describe('IrqController INTx', () => {
  it('holds an interrupt raised while Interrupt Disable is set and delivers it when the bit clears', async () => {
    await assertNoFdLeak(() => {
      const { state, irqs, efd } = intxWithEventFd();
      state.intxDisabledNow = true;
      state.modeNow = 'none';
      assert.equal(irqs.interrupt(), false);
      assert.equal(state.status, true, 'Status bit 3 shows the interrupt even while disabled');
      assert.equal(drain(efd), -11);
      state.intxDisabledNow = false;
      state.modeNow = 'intx';
      irqs.refreshPending();
      assert.equal(drain(efd), 1n, 'delivered once Interrupt Disable cleared');
      irqs.refreshPending();
      assert.equal(drain(efd), -11, 'and only once');
      irqs.reset();
    });
  });

  it('signals again on UNMASK while the line is still asserted (a level is not lost after the client\'s EOI)', async () => {
    await assertNoFdLeak(() => {
      const { state, irqs, efd } = intxWithEventFd();
      const unmask = { argsz: 20, flags: IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_UNMASK, index: 0, start: 0, count: 1 };
      assert.equal(irqs.interrupt(), true);
      assert.equal(drain(efd), 1n);
      irqs.apply(unmask, []); // QEMU's end of interrupt: the device still asserts
      assert.equal(drain(efd), 1n, 'the asserted line is signalled again');
      irqs.deassertIntx();
      irqs.apply(unmask, []);
      assert.equal(drain(efd), -11, 'a deasserted line is not');
      irqs.interrupt();
      drain(efd);
      state.intxDisabledNow = true;
      irqs.apply(unmask, []);
      assert.equal(drain(efd), -11, 'nor one the guest disabled');
      irqs.reset();
    });
  });

  it('forgets a held INTx the device deasserted, and pending state on clearPending', async () => {
    await assertNoFdLeak(() => {
      const { state, irqs, efd } = intxWithEventFd();
      state.intxDisabledNow = true;
      irqs.interrupt();
      irqs.deassertIntx();
      assert.equal(state.status, false);
      state.intxDisabledNow = false;
      irqs.refreshPending();
      assert.equal(drain(efd), -11, 'a deasserted line is not delivered');
      state.intxDisabledNow = true;
      irqs.interrupt();
      irqs.clearPending();
      state.intxDisabledNow = false;
      irqs.refreshPending();
      assert.equal(drain(efd), -11, 'a reset drops it too');
      irqs.reset();
    });
  });

  it('adopts an INTx left asserted in restored config space, delivering it once INTx is enabled', async () => {
    await assertNoFdLeak(() => {
      const { state, irqs, efd } = intxWithEventFd();
      state.status = true; // as config.restore() left it
      state.intxDisabledNow = true;
      irqs.adoptPending();
      assert.equal(drain(efd), -11, 'held while INTx is disabled');
      state.intxDisabledNow = false;
      irqs.refreshPending();
      assert.equal(drain(efd), 1n);
      irqs.reset();
    });
  });
});
