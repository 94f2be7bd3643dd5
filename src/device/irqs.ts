/**
 * Interrupts: the eventfds a client installs per vfio IRQ index and vector
 * (DEVICE_SET_IRQS), the mask state it sets, and the routing of a device's
 * interrupt to INTx, MSI or MSI-X according to what the guest enabled in config
 * space — masked vectors become pending and fire when unmasked.
 */
import { constants as fsConstants, openSync, readlinkSync } from 'node:fs';
import { IrqIndex, IrqSetFlags, NUM_IRQS } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import type { IrqSet } from '../protocol/irq.js';
import { ProtocolError } from '../errors.js';
import { native } from '../native/addon.js';

/** What the interrupt router needs to know about config space. */
export interface InterruptState {
  /** Which mechanism the guest enabled: MSI-X wins over MSI, MSI over INTx ('none': no INTx pin). */
  mode(): 'msix' | 'msi' | 'intx' | 'none';
  /** MSI-X: function mask or the vector's mask bit. */
  msixMasked(vector: number): boolean;
  /** MSI: per-vector mask bit (false without per-vector masking). */
  msiMasked(vector: number): boolean;
  /** MSI: vectors the guest enabled (Multiple Message Enable). */
  msiEnabledVectors(): number;
  /** INTx disabled by the Command register. */
  intxDisabled(): boolean;
  setMsixPending(vector: number, pending: boolean): void;
  /** Pending bits as config space holds them (PBA, MSI Pending, INTx Status), for state restored by migration. */
  msixPending(vector: number): boolean;
  msiPending(vector: number): boolean;
  intxAsserted(): boolean;
  setMsiPending(vector: number, pending: boolean): void;
  setIntxStatus(asserted: boolean): void;
}

const S_IFMT = 0o170000;
const S_IFIFO = 0o010000;

interface Vector {
  fd: number;
  masked: boolean;
  pending: boolean;
}

/** Per-index eventfds, masks and pending bits of one device, for one client. */
export class IrqController {
  readonly #counts: readonly number[];
  readonly #vectors: Vector[][];
  readonly #state: InterruptState;

  /**
   * @param counts - vectors per vfio IRQ index (INTx, MSI, MSI-X, ERR, REQ).
   * @param state - config-space view used to route interrupts.
   */
  constructor(counts: readonly number[], state: InterruptState) {
    this.#counts = counts;
    this.#state = state;
    this.#vectors = counts.map((n) => Array.from({ length: n }, () => ({ fd: -1, masked: false, pending: false })));
  }

  /** Vectors of `index` (0 for an index the device does not have). */
  count(index: number): number {
    return this.#counts[index] ?? 0;
  }

  /**
   * Checks a DEVICE_SET_IRQS request (libvfio-user's rules, one per check).
   * @throws {ProtocolError} EINVAL naming the broken rule.
   */
  validate(set: IrqSet): void {
    const fail = (rule: string): never => {
      throw new ProtocolError(`SET_IRQS index ${set.index} start ${set.start} count ${set.count}: ${rule}`);
    };
    if (set.argsz < 20) fail('argsz below 20');
    const data = set.flags & IrqSetFlags.DATA_TYPE_MASK;
    const action = set.flags & IrqSetFlags.ACTION_TYPE_MASK;
    if (!isSingleBit(data)) fail('exactly one DATA_* flag is required');
    if (!isSingleBit(action)) fail('exactly one ACTION_* flag is required');
    if (set.index >= NUM_IRQS) fail('no such IRQ index');
    const isErrOrReq = set.index === IrqIndex.ERR || set.index === IrqIndex.REQ;
    if (isErrOrReq && (action !== IrqSetFlags.ACTION_TRIGGER || set.count > 1)) fail('ERR/REQ take TRIGGER of at most one vector');
    if (set.count === 0 && (set.start !== 0 || action !== IrqSetFlags.ACTION_TRIGGER || data !== IrqSetFlags.DATA_NONE)) {
      fail('count 0 is only TRIGGER|NONE from start 0 (disable all)');
    }
    const n = this.count(set.index);
    if (set.start >= n) fail(`start beyond the ${n} vectors of this index`);
    if (set.start + set.count > n) fail(`start + count beyond the ${n} vectors of this index`);
  }

  /**
   * Applies a validated DEVICE_SET_IRQS. Takes ownership of `fds` (closed here
   * when not installed).
   * @throws {ProtocolError} EINVAL if `fds` cannot be installed.
   */
  apply(set: IrqSet, fds: readonly number[]): void {
    const data = set.flags & IrqSetFlags.DATA_TYPE_MASK;
    const action = set.flags & IrqSetFlags.ACTION_TYPE_MASK;
    const selected = (i: number): boolean => data !== IrqSetFlags.DATA_BOOL || (set.data?.[i] ?? 0) !== 0;
    if (action !== IrqSetFlags.ACTION_TRIGGER) {
      fds.forEach((fd) => native.close(fd)); // mask/unmask notification fds are not used
      for (let i = 0; i < set.count; i++) if (selected(i)) this.#setMasked(set.index, set.start + i, action === IrqSetFlags.ACTION_MASK);
      return;
    }
    if (data === IrqSetFlags.DATA_EVENTFD) return this.#install(set, fds);
    if (set.count === 0) return this.#disable(set.index, 0, this.count(set.index));
    for (let i = 0; i < set.count; i++) if (selected(i)) this.#signal(set.index, set.start + i);
  }

  /**
   * Raises interrupt `vector` the way the guest configured the device: MSI-X,
   * MSI or INTx. A masked vector is left pending and fires when unmasked.
   * @returns true if an eventfd was signalled.
   */
  interrupt(vector = 0): boolean {
    const s = this.#state;
    switch (s.mode()) {
      case 'msix':
        return this.#raise(IrqIndex.MSIX, vector, s.msixMasked(vector), (p) => s.setMsixPending(vector, p));
      case 'msi':
        if (vector >= s.msiEnabledVectors()) return false;
        return this.#raise(IrqIndex.MSI, vector, s.msiMasked(vector), (p) => s.setMsiPending(vector, p));
      default:
        // INTx (or nothing enabled): Status shows the interrupt even while Interrupt
        // Disable is set, and it is delivered once the guest clears the bit.
        if (this.count(IrqIndex.INTX) === 0) return false;
        s.setIntxStatus(true);
        return this.#raise(IrqIndex.INTX, 0, s.intxDisabled(), () => {});
    }
  }

  /** Signals the ERR or REQ eventfd. @returns true if one was installed. */
  notify(index: typeof IrqIndex.ERR | typeof IrqIndex.REQ): boolean {
    return this.#signal(index, 0);
  }

  /**
   * Re-evaluates pending vectors after the guest unmasked something in config
   * space (MSI-X table, function mask, MSI mask bits): fires those now unmasked.
   */
  refreshPending(): void {
    const s = this.#state;
    const mode = s.mode();
    if (mode === 'msix' || mode === 'msi') {
      const index = mode === 'msix' ? IrqIndex.MSIX : IrqIndex.MSI;
      this.#vectors[index]?.forEach((v, i) => {
        const masked = index === IrqIndex.MSIX ? s.msixMasked(i) : s.msiMasked(i);
        if (!v.pending || masked || v.masked) return;
        v.pending = false;
        if (index === IrqIndex.MSIX) s.setMsixPending(i, false);
        else s.setMsiPending(i, false);
        this.#signal(index, i);
      });
      return;
    }
    const intx = this.#vectors[IrqIndex.INTX]?.[0];
    if (intx?.pending && !intx.masked && !s.intxDisabled()) {
      intx.pending = false;
      this.#signal(IrqIndex.INTX, 0);
    }
  }

  /** The device deasserted its INTx line: nothing left to deliver, Status bit 3 cleared. */
  deassertIntx(): void {
    const intx = this.#vectors[IrqIndex.INTX]?.[0];
    if (!intx) return;
    intx.pending = false;
    this.#state.setIntxStatus(false);
  }

  /**
   * Takes over the pending interrupts config space holds after it was restored
   * (migration): PBA bits, MSI Pending bits, INTx Status. Those now unmasked fire.
   */
  adoptPending(): void {
    const s = this.#state;
    this.#vectors[IrqIndex.MSIX]?.forEach((v, i) => (v.pending = s.msixPending(i)));
    this.#vectors[IrqIndex.MSI]?.forEach((v, i) => (v.pending = s.msiPending(i)));
    const intx = this.#vectors[IrqIndex.INTX]?.[0];
    if (intx) intx.pending = s.intxAsserted();
    this.refreshPending();
  }

  /** Forgets undelivered interrupts (device reset); installed eventfds stay. */
  clearPending(): void {
    for (const vs of this.#vectors) for (const v of vs) v.pending = false;
  }

  /** Whether vector `vector` of `index` has an eventfd installed. */
  hasEventFd(index: number, vector: number): boolean {
    return (this.#vectors[index]?.[vector]?.fd ?? -1) >= 0;
  }

  /** Closes every eventfd and clears masks (client gone, or device reset). */
  reset(): void {
    this.#vectors.forEach((vs, index) => this.#disable(index, 0, vs.length));
    for (const vs of this.#vectors) for (const v of vs) Object.assign(v, { masked: false, pending: false });
  }

  #raise(index: number, vector: number, configMasked: boolean, setPending: (p: boolean) => void): boolean {
    const v = this.#vectors[index]?.[vector];
    if (!v) return false;
    if (configMasked || v.masked) {
      v.pending = true;
      setPending(true);
      return false;
    }
    return this.#signal(index, vector);
  }

  #setMasked(index: number, vector: number, masked: boolean): void {
    const v = this.#vectors[index]?.[vector];
    if (!v) return;
    v.masked = masked;
    if (masked) return;
    if (v.pending) return this.refreshPending();
    // INTx is a level: a client unmasks after its end of interrupt (QEMU does, as the kernel automasks);
    // a line still asserted is signalled again, as vfio-pci does, or the level would be lost.
    if (index === IrqIndex.INTX && this.#state.mode() === 'intx' && this.#state.intxAsserted() && !this.#state.intxDisabled()) {
      this.#signal(IrqIndex.INTX, 0);
    }
  }

  #signal(index: number, vector: number): boolean {
    const fd = this.#vectors[index]?.[vector]?.fd ?? -1;
    if (fd < 0) return false;
    // A full or closed pipe fails (EAGAIN/EPIPE; Node ignores SIGPIPE) instead of blocking or killing us.
    return native.eventfdWrite(fd, 1n) === 0;
  }

  #install(set: IrqSet, fds: readonly number[]): void {
    if (fds.length === 0) return this.#disable(set.index, set.start, set.count);
    const usable: number[] = [];
    try {
      for (const fd of fds) usable.push(writableEventFd(fd));
    } catch (error) {
      // writableEventFd closed the one that failed; close the converted ones and those not reached.
      for (const fd of usable) native.close(fd);
      for (const fd of fds.slice(usable.length + 1)) native.close(fd);
      throw error;
    }
    this.#disable(set.index, set.start, set.count);
    usable.forEach((fd, i) => {
      const v = this.#vectors[set.index]?.[set.start + i];
      if (v) v.fd = fd;
    });
  }

  #disable(index: number, start: number, count: number): void {
    const vs = this.#vectors[index] ?? [];
    for (let i = start; i < start + count && i < vs.length; i++) {
      const v = vs[i] as Vector;
      if (v.fd >= 0) native.close(v.fd);
      v.fd = -1;
    }
  }
}

function isSingleBit(x: number): boolean {
  return x !== 0 && (x & (x - 1)) === 0;
}

/**
 * Makes sure signalling never blocks the server. An eventfd is used as is (an
 * 8-byte write to it cannot block short of counter overflow); a FIFO (the write
 * end of a pipe passed as an "eventfd", which libvfio-user accepts) is reopened
 * non-blocking through /proc, which gives a new open file description and
 * leaves the client's flags untouched; anything else (a socket, a blocking file)
 * is refused. Takes ownership of `fd` (closed on failure).
 * @throws {ProtocolError} EINVAL if the fd cannot be used as an interrupt.
 */
export function writableEventFd(fd: number): number {
  let mode = 0;
  let target = '';
  try {
    mode = native.fstat(fd).mode;
    target = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    // reported below
  }
  if (target === 'anon_inode:[eventfd]') return fd;
  if ((mode & S_IFMT) !== S_IFIFO) {
    native.close(fd);
    throw new ProtocolError(`SET_IRQS: fd is not an eventfd or a pipe (${target || 'unknown'})`, { errno: Errno.EINVAL });
  }
  try {
    return openSync(`/proc/self/fd/${fd}`, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK); // libuv adds O_CLOEXEC
  } catch {
    throw new ProtocolError('SET_IRQS: a pipe given as eventfd could not be reopened non-blocking (no reader?)', { errno: Errno.EINVAL });
  } finally {
    native.close(fd);
  }
}
