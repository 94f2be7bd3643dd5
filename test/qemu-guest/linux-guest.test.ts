/**
 * End to end with a real Linux guest: QEMU (`VFIO_USER_QEMU`, TCG) boots a
 * kernel (`VFIO_USER_GUEST_KERNEL`, e.g. Debian's /boot/vmlinuz-*) with an
 * initramfs built here (static busybox, `VFIO_USER_GUEST_BUSYBOX`, and the
 * uio modules of that kernel) and our sample devices attached through
 * vfio-user-pci; the guest's /init (test/support/qemu-guest/init.sh) checks
 * them from inside and prints its results on the serial console. The GPIO card
 * is hot-plugged with QMP device_add behind a PCIe root port once the guest
 * runs. The DMA engine is driven twice: by `devmem` with its MSI-X messages
 * aimed at RAM, then — with `gcc -static` available — through the guest
 * kernel's vfio-pci behind QEMU's emulated Intel IOMMU by a static C driver
 * (vfio-dma.c), so the guest takes a real MSI-X interrupt. A fourth device's
 * server (`vfio-user serve`, a child process) is killed while the guest runs.
 * Slow (about 20 s on an idle 2-core machine, 30 s with both cores busy);
 * skipped unless both variables are set. docs/interop.md, "Linux guest".
 */
import assert from 'node:assert/strict';
import { before, describe, it, type TestContext } from 'node:test';
import { DMA_ENGINE_PCI_ID, GPIO_PCI_ID, MEMORY_PCI_ID } from '../../src/devices/index.js';
import { guestKit } from '../support/qemu-guest/kit.js';
import { DMA_DST, DMA_SRC, VFIO_IOVA, VICTIM_MSG_TIMEOUT_MS, runGuest, vfioSkip, type GuestRun } from '../support/qemu-guest/scenario.js';

const { kit, skip } = guestKit({ intx: ['uio_pci_generic'], vfio: ['vfio_pci', 'vfio_iommu_type1'] });
const intxMissing = kit?.missing['intx'] ?? [];
const intxSkip = intxMissing.length > 0 ? `no uio_pci_generic for the guest kernel: ${intxMissing.join('; ')}` : false;
const vfioSkipped = kit ? vfioSkip(kit) : false;

/** Linux's IORESOURCE_* flags in /sys/bus/pci/devices/* /resource. */
const IORESOURCE = { IO: 0x100, MEM: 0x200, PREFETCH: 0x2000, MEM_64: 0x10_0000 } as const;

/** FNV-1a 32, written here independently of the device's implementation. */
function fnv1a(bytes: Uint8Array): number {
  let h = 0x811c9dc5;
  for (const b of bytes) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h;
}

describe('a Linux guest in QEMU drives our devices through vfio-user-pci', { skip, timeout: 300_000 }, () => {
  let run: GuestRun;

  before(async () => {
    run = await runGuest(kit!, 240_000);
  });

  const context = (): string =>
    `\n--- console (last 60 lines):\n${run.transcript.split('\n').slice(-60).join('\n')}` +
    `\n--- QEMU printed (${JSON.stringify(run.qemuExit)}):\n${run.qemuOutput}\n--- host errors: ${run.host.errors.join('; ')}`;
  /** The words of the single result line starting with `prefix`. */
  const line = (prefix: string): string[] => {
    const found = run.results.filter((l) => l.startsWith(`${prefix} `));
    assert.equal(found.length, 1, `expected one "${prefix}" line${context()}`);
    return (found[0] as string).split(' ');
  };
  const num = (s: string | undefined): number => Number(s);
  /** [start, end, flags] of BAR `index` of `name`. */
  const bar = (name: string, index: number): [bigint, bigint, number] => {
    const w = line(`bar ${name} ${index}`);
    return [BigInt(w[3] as string), BigInt(w[4] as string), num(w[5])];
  };

  it('boots, runs every step of /init and powers off', (t: TestContext) => {
    t.diagnostic(`whole run ${run.durationMs} ms; guest uptime at /init ${line('boot')[1]} s, at the end ${line('END')[1]} s`);
    assert.deepEqual(run.results.filter((l) => l.startsWith('FAIL')), [], context());
    assert.deepEqual(run.host.errors, [], context());
    assert.deepEqual(run.qemuExit, { code: 0, signal: null }, context());
    assert.deepEqual(
      run.results.filter((l) => l.startsWith('module ')),
      (kit?.modules ?? []).map((m) => `module ${m.name} loaded`),
    );
  });

  it('enumerates the cold-plugged devices with their ids and class codes, BARs assigned', () => {
    for (const [name, id] of [['mem', MEMORY_PCI_ID], ['dma', DMA_ENGINE_PCI_ID], ['victim', MEMORY_PCI_ID]] as const) {
      const w = line(`dev ${name}`);
      assert.deepEqual(w.slice(3).map(num), [id.vendorId, id.deviceId, id.classCode], `${name}${context()}`);
    }
    const size = ([start, end]: [bigint, bigint, number]): bigint => end - start + 1n;
    const mem0 = bar('mem', 0);
    assert.equal(size(mem0), 1n << 20n);
    assert.equal(mem0[2] & (IORESOURCE.MEM | IORESOURCE.PREFETCH | IORESOURCE.MEM_64), IORESOURCE.MEM | IORESOURCE.PREFETCH | IORESOURCE.MEM_64);
    assert.equal(size(bar('mem', 2)), 256n);
    assert.equal(size(bar('victim', 0)), 64n << 10n);
    for (const b of [bar('dma', 0), bar('dma', 4)]) {
      assert.equal(size(b), 4096n);
      assert.equal(b[2] & IORESOURCE.MEM, IORESOURCE.MEM);
      assert.ok(b[0] > 0n && b[0] % 4096n === 0n, `BAR at ${b[0]}`);
    }
  });

  it('hot-plugs the GPIO card behind a PCIe root port (device_add); its I/O BAR works', (t: TestContext) => {
    assert.equal(run.host.hotplugError, undefined);
    const [, , , before, after] = line('hotplug gpio present');
    t.diagnostic(`GPIO card present in the guest ${((num(after) - num(before)) * 1000).toFixed(0)} ms after device_add returned`);
    const w = line('dev gpio');
    assert.match(w[2] as string, /^0000:0[1-9a-f]:00\.0$/, 'on the root port’s secondary bus');
    assert.deepEqual(w.slice(3).map(num), [GPIO_PCI_ID.vendorId, GPIO_PCI_ID.deviceId, GPIO_PCI_ID.classCode]);
    const [start, end, flags] = bar('gpio', 2);
    assert.equal(end - start + 1n, 256n);
    assert.equal(flags & IORESOURCE.IO, IORESOURCE.IO);
    assert.equal(run.host.gpioOutputs, 0xa55a, 'OUTPUT written by the guest through the I/O BAR');
  });

  it('memory device: BAR0 is shared both ways (devmem in the guest, the memfd on the host), FILL through BAR2', () => {
    assert.equal(num(line('mem size')[2]), 1 << 20);
    assert.deepEqual(run.host.memGuestWords, [0, 1, 2, 3, 4, 5, 6, 7].map((i) => 0xc0de0000 + i));
    assert.equal(run.host.memHostWords.length, 4);
    run.host.memHostWords.forEach((v, i) => assert.equal(num(line(`mem host-word ${i}`)[3]), v, `host word ${i}`));
    const fill = line('mem fill');
    assert.equal(num(fill[3]) & 3, 1, 'STATUS DONE, not ERROR');
    assert.deepEqual([fill[5], fill[7], fill[9]].map(num), [0xa5c3f00f, 0xa5c3f00f, 0]);
  });

  it('DMA engine: a COPY job through guest RAM, completion by MSI-X vector 0', () => {
    assert.ok(run.host.dmaSource && run.host.dmaDest, context());
    assert.ok(run.host.dmaSource.some((b) => b !== 0), 'the guest filled the source from /dev/urandom');
    assert.deepEqual(run.host.dmaDest, run.host.dmaSource, 'destination equals source, as the device sees guest RAM');
    const md5 = line('dma md5');
    assert.equal(md5[2], md5[3], 'the guest sees the same bytes at both buffers');
    assert.deepEqual([md5[5], md5[7]].map(num), [DMA_SRC, DMA_DST]);
    const desc = line('dma desc');
    assert.equal(num(desc[3]), 1, 'descriptor status DONE');
    assert.equal(num(desc[5]), fnv1a(run.host.dmaSource), 'descriptor checksum = FNV-1a of the source');
    const regs = line('dma regs');
    assert.deepEqual([regs[3], regs[5], regs[7], regs[9]].map(num), [1, 1, 0, 0], 'HEAD, COMPLETED, ERRORS, STATUS');
    const msix = line('dma msix');
    assert.deepEqual([msix[3], msix[5]].map(num), [0x5a5a0000, 0], 'vector 0 wrote its message; vector 1 (errors) did not');
    assert.equal(num(line('dma msix-control')[2]) & 0xc000, 0x8000, 'MSI-X enabled, function not masked');
  });

  it('DMA engine through the guest kernel\'s vfio-pci behind an emulated Intel IOMMU: the guest takes MSI-X vector 0', { skip: vfioSkipped }, () => {
    const group = line('vfio group');
    assert.deepEqual([group[4]], [`0x${VFIO_IOVA.toString(16)}+0x4000`], 'vfio-dma mapped its buffer');
    const msix = line('vfio msix');
    assert.deepEqual([msix[3], msix[5]].map(num), [1, 0], 'eventfd counts: vector 0 once, vector 1 (errors) never');
    assert.ok(num(msix[7]) >= 1, `the guest kernel counted vfio-msix[0] in /proc/interrupts: ${msix[7]}`);
    const desc = line('vfio desc');
    assert.equal(num(desc[3]), 1, 'descriptor status DONE');
    assert.equal(desc[5], desc[7], 'checksum = FNV-1a of the source computed by the guest');
    assert.equal(desc[9], 'equal', 'the guest sees destination = source');
    const regs = line('vfio regs');
    assert.deepEqual([regs[3], regs[5], regs[7]].map(num), [1, 1, 0], 'HEAD, COMPLETED, STATUS');
    assert.ok(run.host.vfioSource && run.host.vfioDest, context());
    assert.ok(run.host.vfioSource.some((b) => b !== 0));
    assert.deepEqual(run.host.vfioDest, run.host.vfioSource, 'the device reads the same bytes at the IOVA the guest mapped');
    assert.equal(num(desc[5]), fnv1a(run.host.vfioSource), 'and their FNV-1a is the descriptor checksum');
  });

  it('GPIO card: two change-of-state interrupts through INTx (uio_pci_generic)', { skip: intxSkip }, () => {
    assert.deepEqual(run.host.gpioInputs, [0b01, 0b11]);
    assert.match(line('gpio uio')[2] as string, /^uio\d+$/);
    const round = (n: number): number[] => {
      const w = line(`gpio irq ${n}`);
      return [w[4], w[6], w[8]].map(num);
    };
    assert.deepEqual(round(1), [1, 0b01, 0b01], 'interrupt count 1, IRQ_STATUS input 0, INPUT');
    assert.deepEqual(round(2), [2, 0b10, 0b11], 'interrupt count 2, IRQ_STATUS input 1, INPUT');
    assert.deepEqual([line('gpio after')[3], line('gpio after')[5]].map(num), [0, 0], 'status cleared, INTx deasserted');
  });

  it('a server killed under the running guest: QEMU and the guest go on; mmapped BAR0 still works, BAR2 reads all-ones after x-msg-timeout', (t: TestContext) => {
    assert.deepEqual(run.host.victimExit, { code: null, signal: 'SIGKILL' });
    const before = line('victim before');
    assert.deepEqual([before[3], before[5]].map(num), [64 << 10, 0x600df00d]);
    const after = line('victim after');
    assert.deepEqual([after[3], after[5], after[7]].map(num), [0xffffffff, 0xffffffff, 0x0badf00d], 'BAR2 twice, then BAR0 written and read');
    const [t0, t1, t2, t3] = [after[9], after[10], after[11], after[12]].map(num) as [number, number, number, number];
    const ms = (a: number, b: number): string => ((b - a) * 1000).toFixed(0);
    t.diagnostic(`BAR2 reads of the dead server took ${ms(t0, t1)} and ${ms(t1, t2)} ms, a BAR2 write ${ms(t2, t3)} ms (x-msg-timeout ${VICTIM_MSG_TIMEOUT_MS} ms)`);
    t.diagnostic(`QEMU printed after the kill: ${JSON.stringify(run.host.qemuAfterKill)}`);
    assert.equal(run.host.statusAfterKill, 'running');
    assert.ok(run.results.some((l) => l.startsWith('victim alive ')));
  });
});
