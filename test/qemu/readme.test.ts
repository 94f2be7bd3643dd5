/**
 * The README's "Use with QEMU" command lines, run as written: the `serve`
 * line starts our CLI server, the QEMU line's machine, memory and device
 * arguments start a real QEMU (only the socket path is moved into a temporary
 * directory, the guest kernel arguments are dropped and the qtest accelerator
 * stands in for the guest). The device must be attached and enumerated.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { qemuBinary, startQemu, type Qemu } from '../support/qemu/launcher.js';
import { startCliServer, type ChildServer } from '../support/qemu/servers.js';

const README = fileURLToPath(new URL('../../../README.md', import.meta.url));
const binary = qemuBinary();

/** The README's shell block that attaches a device to QEMU. */
function readmeQemuBlock(): string[] {
  const blocks = [...readFileSync(README, 'utf8').matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1] ?? '');
  const block = blocks.find((b) => b.includes('vfio-user-pci') && b.includes('vfio-user serve'));
  assert.ok(block, 'README has a shell block serving a device and starting QEMU with vfio-user-pci');
  return block.replace(/\\\n\s*/g, '').split('\n').filter((l) => l.trim() !== '');
}

/** Splits a shell command line into words (single quotes and plain words: all the README uses). */
function shellWords(line: string): string[] {
  const words: string[] = [];
  for (const m of line.matchAll(/'([^']*)'|(\S+)/g)) words.push(m[1] ?? m[2] ?? '');
  return words;
}

/** Drops the options that boot a guest OS (each with its value), and -nographic. */
function withoutGuestBoot(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === '-kernel' || a === '-initrd' || a === '-append') i++;
    else if (a !== '-nographic') out.push(a);
  }
  return out;
}

describe('README: Use with QEMU', { skip: binary.skip }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-readme-qemu-'));
  let server: ChildServer;
  let qemu: Qemu;

  before(async () => {
    const [serveLine, qemuLine] = readmeQemuBlock();
    const serve = shellWords(serveLine ?? '');
    assert.deepEqual(serve.slice(0, 3), ['vfio-user', 'serve', 'gpio']);
    const readmeSocket = serve[serve.indexOf('--socket') + 1] as string;
    server = await startCliServer(dir, 'gpio');
    const words = shellWords(qemuLine ?? '').map((w) => w.replaceAll(readmeSocket, server.path));
    assert.equal(words[0], 'qemu-system-x86_64');
    qemu = await startQemu(binary.path as string, { machineArgs: withoutGuestBoot(words.slice(1)) });
  });

  after(async () => {
    await qemu?.close();
    await server?.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  it('attaches the served GPIO card: QEMU lists it with its ids, class and I/O BAR', async () => {
    const buses = await qemu.qmp.execute<{ devices: { id: { vendor: number; device: number }; class_info: { class: number }; regions: { type: string; size: number }[] }[] }[]>('query-pci');
    const card = buses.flatMap((b) => b.devices).find((d) => d.id.vendor === 0x494f && d.id.device === 0x0dc8);
    assert.ok(card, `the GPIO card is on the bus; QEMU printed: ${qemu.output()}`);
    assert.equal(card.class_info.class, 0x1180);
    assert.ok(card.regions.some((r) => r.type === 'io' && r.size === 256));
    assert.doesNotMatch(qemu.output(), /Could not enable error recovery|spurious|max_msg_fds/);
  });
});
