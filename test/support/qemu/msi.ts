/**
 * Seeing MSI and MSI-X under qtest. No CPU runs, so the test points a vector's
 * message address at guest RAM instead of the APIC (0xfee00000): QEMU delivers
 * the interrupt as a DMA write of the message data to that address
 * (`msi_send_message` → the device's bus-master address space), and the test
 * polls the RAM with qtest — as QEMU's libqos virtio tests do (virtio-pci.c:
 * `msix_addr = guest_alloc(...)`, then `qtest_readl(msix_addr) == msix_data`).
 * Bus mastering must be on for the write to land.
 *
 * For vfio-user-pci QEMU emulates the MSI and MSI-X capability and the MSI-X
 * table itself; the server only signals the vector's eventfd, so a message
 * that arrives proves the whole path: device → server → eventfd → QEMU → guest.
 */
import { CapId, type PciFunction } from './pci.js';
import type { QtestClient } from './qtest.js';

/** MSI-X table layout and where it is in guest memory. */
export interface MsixTable {
  cap: number;
  size: number;
  /** Guest address of entry 0 (BAR address + table offset). */
  table: bigint;
  /** Guest address of the PBA. */
  pba: bigint;
}

/** Reads the MSI-X capability; the BARs must be assigned. */
export async function msixTable(fn: PciFunction): Promise<MsixTable> {
  const cap = await fn.capability(CapId.MSIX);
  const control = await fn.read16(cap + 2);
  const table = await fn.read32(cap + 4);
  const pba = await fn.read32(cap + 8);
  return {
    cap,
    size: (control & 0x7ff) + 1,
    table: fn.bar(table & 7).address + BigInt((table & ~7) >>> 0),
    pba: fn.bar(pba & 7).address + BigInt((pba & ~7) >>> 0),
  };
}

/** Enables MSI-X (function mask off) and programs `vectors[i]` = { address, data }, unmasked. */
export async function enableMsix(qt: QtestClient, fn: PciFunction, t: MsixTable, vectors: { address: bigint; data: number }[]): Promise<void> {
  // Enable with the function masked while the table is written, then unmask.
  await fn.write16(t.cap + 2, (1 << 15) | (1 << 14));
  for (const [i, v] of vectors.entries()) {
    const entry = t.table + BigInt(16 * i);
    await qt.writel(entry, Number(v.address & 0xffff_ffffn));
    await qt.writel(entry + 4n, Number(v.address >> 32n));
    await qt.writel(entry + 8n, v.data);
    await qt.writel(entry + 12n, 0);
  }
  await fn.write16(t.cap + 2, 1 << 15);
}

/** Enables MSI with one vector writing `data` to `address`. */
export async function enableMsi(fn: PciFunction, address: bigint, data: number): Promise<number> {
  const cap = await fn.capability(CapId.MSI);
  const control = await fn.read16(cap + 2);
  const is64 = (control & (1 << 7)) !== 0;
  await fn.write32(cap + 4, Number(address & 0xffff_ffffn));
  if (is64) await fn.write32(cap + 8, Number(address >> 32n));
  else if (address >> 32n !== 0n) throw new Error('MSI: 32-bit capability, 64-bit address');
  await fn.write16(cap + (is64 ? 12 : 8), data);
  // Enable, one vector (Multiple Message Enable 0).
  await fn.write16(cap + 2, (control & ~(7 << 4)) | 1);
  return cap;
}

/**
 * Polls guest memory at `address` until it holds `data` (then clears it, to see
 * the next message) — a message arrived. Rejects after `timeoutMs`, naming what
 * the address held.
 */
export async function waitMessage(qt: QtestClient, address: bigint, data: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const seen = await qt.readl(address);
    if (seen === data) {
      await qt.writel(address, 0);
      return;
    }
    if (Date.now() > deadline) throw new Error(`no message 0x${data.toString(16)} at 0x${address.toString(16)} within ${timeoutMs} ms (it holds 0x${seen.toString(16)})`);
    await new Promise((r) => setTimeout(r, 1));
  }
}
