/**
 * Helpers for the CLI tests: run the real binary as a child process (async, so
 * an in-process server keeps answering), serve devices on temporary sockets,
 * and a device with one of everything for `info` and `lspci`.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createDevice, type VfioUserDevice } from '../../src/device/device.js';
import type { DeviceServer } from '../../src/server/server.js';

export const MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

/** What a run of the CLI produced. */
export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `node main.js ...args` to completion (killed after `timeoutMs`). */
export function runCli(args: readonly string[], timeoutMs = 30_000): Promise<CliResult> {
  const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => void (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => void (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Asserts-friendly: the lines of stderr, without the trailing empty one. */
export function stderrLines(r: CliResult): string[] {
  return r.stderr.split('\n').filter((l) => l !== '');
}

/** A device served in this process on a temporary socket. */
export interface Served {
  path: string;
  dir: string;
  device: VfioUserDevice;
  server: DeviceServer;
  close(): Promise<void>;
}

/** Serves `device` on `<tmp>/device.sock`; `close()` stops it, disposes the device and removes the directory. */
export function serve(device: VfioUserDevice): Served {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-cli-'));
  const path = join(dir, 'device.sock');
  const server = device.serve(path);
  return {
    path,
    dir,
    device,
    server,
    async close() {
      await server.close();
      device.dispose();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Subsystem and serial number of {@link createRichDevice}. */
export const RICH = {
  vendorId: 0x1af4,
  deviceId: 0x10f0,
  subsystemVendorId: 0x1af4,
  subsystemId: 0x1100,
  classCode: 0x020000,
  revision: 2,
  serialNumber: 0x0123_4567_89ab_cdefn,
} as const;

/**
 * A device with one of everything: a RAM-like BAR0, an I/O BAR1, a shared
 * 64-bit prefetchable BAR2, MSI-X in BAR4, an expansion ROM, INTx, MSI,
 * MSI-X, ERR and REQ, PCI Express with DSN, a vendor capability and a VSEC.
 */
export function createRichDevice(): VfioUserDevice {
  const bar0 = new Uint8Array(4096);
  const rom = new Uint8Array(2048).fill(0xee);
  return createDevice({
    name: 'cli-rich',
    pci: { vendorId: RICH.vendorId, deviceId: RICH.deviceId, subsystemVendorId: RICH.subsystemVendorId, subsystemId: RICH.subsystemId, classCode: RICH.classCode, revision: RICH.revision },
    regions: {
      bar0: { size: 4096, read: (o, n) => bar0.slice(o, o + n), write: (o, d) => void bar0.set(d, o) },
      bar1: { size: 256, type: 'io', read: (_o, n) => new Uint8Array(n), write: () => {} },
      bar2: { size: 0x10000, type: 'mem64', prefetchable: true, shared: true },
      bar4: { size: 0x2000 },
      rom: { size: 2048, read: (o, n) => rom.slice(o, o + n) },
    },
    irqs: { intx: true, msi: 4, msix: 8, err: true, req: true },
    msix: { bar: 4, tableOffset: 0, pbaOffset: 0x1000 },
    capabilities: {
      express: { portType: 'endpoint' },
      serialNumber: RICH.serialNumber,
      vendor: [Uint8Array.of(0xde, 0xad, 0xbe, 0xef)],
      vendorExtended: [{ id: 0x1234, revision: 2, data: new Uint8Array(8).fill(0x5a) }],
    },
  });
}
