/** `vfio-user demo` (= `npm start`): the DMA engine in a child process, driven and verified end to end. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { verifyJob } from '../../src/cli/commands/demo.js';
import { DmaEngineDriver, type CopyJob } from '../../src/cli/dma-driver.js';
import type { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { encodeDescriptor, DescriptorFlags, errorStatus } from '../../src/devices/dma-descriptor.js';
import { fnv1a32 } from '../../src/devices/fnv1a.js';
import { runCli } from './support.js';

describe('vfio-user demo', () => {
  it('serves the DMA engine in a child, runs verified copy jobs on MSI-X completions, exits 0', async () => {
    const r = await runCli(['demo', '--jobs', '300'], 60_000);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    const out = r.stdout;
    assert.match(out, /^server +pid \d+: vfio-user serve dma-engine --socket \S+\/dma\.sock$/m);
    assert.match(out, /^connected +vfio-user 0\.2; device 1234:5a02, 9 regions, 5 IRQ indexes$/m);
    assert.match(out, /^guest RAM +64 MiB memfd, DMA_MAP at IOVA 0x100000000 with its fd/m);
    assert.match(out, /^PCI +bus master on; MSI-X on, 2 vectors/m);
    const summary = /^summary +300 jobs, ([\d.]+) MB copied and verified in ([\d.]+) s = ([\d.]+) MB\/s; MSI-X interrupts: (\d+) completion, 0 error; errors 0; device COMPLETED=300 ERRORS=0$/m.exec(out);
    assert.ok(summary, out);
    const mb = Number(summary[1]);
    assert.ok(mb >= (300 * 64 * 1024) / 1e6 && mb <= (300 * 1024 * 1024) / 1e6, `${mb} MB`);
    assert.ok(Number(summary[4]) >= 1, 'completions came from interrupts');
  });

  it('--json summary', async () => {
    const r = await runCli(['demo', '--jobs', '40', '--json'], 60_000);
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as { jobs: number; bytes: number; errors: number; elapsedMs: number; mbPerSec: number; interrupts: { completion: number; error: number; waits: number }; device: { completed: number; errors: number } };
    assert.equal(s.jobs, 40);
    assert.equal(s.errors, 0);
    assert.deepEqual(s.device, { completed: 40, errors: 0 });
    assert.equal(s.interrupts.error, 0);
    assert.ok(s.interrupts.completion >= 1 && s.interrupts.waits >= 1);
    assert.ok(s.bytes >= 40 * 65536 && s.elapsedMs > 0 && s.mbPerSec > 0);
  });

  it('--jobs must be a positive count', async () => {
    const r = await runCli(['demo', '--jobs', '0']);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, 'vfio-user: --jobs: must be at least 1\n');
  });

  it('verification catches a failed descriptor, a wrong checksum and a bad copy', () => {
    const memory = GuestMemory.create(1 << 20, { name: 'verify-test' });
    try {
      const driver = new DmaEngineDriver({} as VfioUserClient, memory, 0x1000_0000n, 0n, 4);
      const data = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7) & 0xff);
      const job: CopyJob = { seq: 9, slot: 1, src: 0x1000n, dst: 0x2000n, length: data.length, expected: fnv1a32(data) };
      memory.write(job.src, data);
      memory.write(job.dst, data);
      const writeBack = (checksum: number, status: number): void =>
        memory.write(32n, encodeDescriptor({ src: 0n, dst: 0n, length: 0, flags: DescriptorFlags.COPY, checksum, status }));
      writeBack(job.expected, 1);
      assert.equal(verifyJob(driver, job), undefined);
      writeBack(job.expected ^ 1, 1);
      assert.match(verifyJob(driver, job) ?? '', /^job 9: device checksum 0x[0-9a-f]{8}, expected 0x[0-9a-f]{8}$/);
      writeBack(0, errorStatus(14));
      assert.equal(verifyJob(driver, job), 'job 9: status 0x000e0002 (errno 14)');
      writeBack(job.expected, 1);
      memory.write(job.dst + 999n, Uint8Array.of((data[999] ?? 0) ^ 0xff));
      assert.equal(verifyJob(driver, job), 'job 9: destination differs from source');
    } finally {
      memory.dispose();
    }
  });
});
