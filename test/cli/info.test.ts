/** `vfio-user info`: negotiation, device, PCI ids (named from a pci.ids), migration, regions and IRQs, as text and as JSON. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createDmaEngineDevice } from '../../src/devices/dma-engine.js';
import { createMemoryDevice } from '../../src/devices/memory.js';
import { fileURLToPath } from 'node:url';
import { createRichDevice, runCli, serve, type Served } from './support.js';
import { createGpioDevice } from '../../src/devices/gpio.js';
import { IsolationGroupState } from '../../src/server/isolation-group.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const PCI_IDS = fileURLToPath(new URL('../../../test/fixtures/pci/pci.ids', import.meta.url));

interface InfoJson {
  socket: string;
  version: { major: number; minor: number };
  advertised: { client: Record<string, unknown>; server: Record<string, unknown> };
  server: { maxMsgFds: number; maxDataXferSize: number; writeMultiple: boolean; twinSocket: { supported: boolean } };
  device: { flags: string[]; rawFlags: number; numRegions: number; numIrqs: number };
  pci: { vendorId: number; deviceId: number; subsystemVendorId: number; subsystemId: number; classCode: number; revision: number; names: Record<string, string | null>; title: string; subsystemTitle: string | null };
  migration: { supported: boolean; error?: string; flags: string[]; rawFlags: number; state?: string; extensions: Record<string, number>; identity?: { deviceType: string; stateVersion: number } };
  regions: Array<{ index: number; name: string; size: number; flags: string[]; fdOffset: number; fd: boolean; sparse: Array<{ offset: number; size: number }> }>;
  irqs: Array<{ index: number; name: string; count: number; flags: string[] }>;
}

describe('vfio-user info', () => {
  let rich: Served;
  let memory: Served;
  before(() => {
    process.env['VFIO_USER_PCI_IDS'] = PCI_IDS; // the CLI children inherit it
    rich = serve(createRichDevice());
    memory = serve(createMemoryDevice({ size: 1 << 20 }).device);
  });
  after(async () => {
    delete process.env['VFIO_USER_PCI_IDS'];
    await rich.close();
    await memory.close();
  });

  it('--json has the version, both sides\' capabilities, device flags, every region and IRQ', async () => {
    const r = await runCli(['info', rich.path, '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    const info = JSON.parse(r.stdout) as InfoJson;
    assert.equal(info.socket, rich.path);
    assert.deepEqual(info.version, { major: 0, minor: 2 });
    assert.equal(info.advertised.client['max_msg_fds'], 16);
    assert.equal(typeof info.advertised.server['max_data_xfer_size'], 'number');
    assert.equal(info.server.maxDataXferSize, info.advertised.server['max_data_xfer_size']);
    assert.deepEqual(info.device, { flags: ['RESET', 'PCI'], rawFlags: 3, numRegions: 9, numIrqs: 5 });
    assert.deepEqual(info.pci, {
      vendorId: 0x1af4,
      deviceId: 0x10f0,
      subsystemVendorId: 0x1af4,
      subsystemId: 0x1100,
      classCode: 0x020000,
      revision: 2,
      names: { vendor: 'Red Hat, Inc.', device: null, subsystemVendor: 'Red Hat, Inc.', subsystem: null, class: 'Ethernet controller' },
      title: 'Ethernet controller [0200]: Red Hat, Inc. Device [1af4:10f0] (rev 02)',
      subsystemTitle: 'Red Hat, Inc. Device [1af4:1100]',
    });
    assert.deepEqual(info.migration, { supported: false, error: 'EINVAL', flags: [], rawFlags: 0, extensions: {} }, 'no migration on this device');
    assert.deepEqual(info.regions.map((g) => g.name), ['BAR0', 'BAR1', 'BAR2', 'BAR3', 'BAR4', 'BAR5', 'ROM', 'CONFIG', 'VGA']);
    const [bar0, bar1, bar2, bar3, , , rom, config] = info.regions;
    assert.deepEqual([bar0?.size, bar0?.flags, bar0?.fd], [4096, ['R', 'W'], false]);
    assert.deepEqual([bar1?.size, bar1?.flags], [256, ['R', 'W']]);
    assert.deepEqual([bar2?.size, bar2?.flags, bar2?.fd, bar2?.sparse], [0x10000, ['R', 'W', 'MMAP', 'CAPS'], true, [{ offset: 0, size: 0x10000 }]]);
    assert.deepEqual([bar3?.size, bar3?.flags], [0, []]);
    assert.deepEqual([rom?.size, rom?.flags], [2048, ['R']]);
    assert.deepEqual([config?.size, config?.flags], [4096, ['R', 'W']]);
    assert.deepEqual(
      info.irqs.map((i) => [i.name, i.count, i.flags]),
      [
        ['INTX', 1, ['EVENTFD']],
        ['MSI', 4, ['EVENTFD']],
        ['MSIX', 8, ['EVENTFD']],
        ['ERR', 1, ['EVENTFD']],
        ['REQ', 1, ['EVENTFD']],
      ],
    );
  });

  it('prints a readable report', async () => {
    const r = await runCli(['info', memory.path]);
    assert.equal(r.code, 0, r.stderr);
    const out = r.stdout;
    assert.match(out, /^protocol +vfio-user 0\.2$/m);
    assert.match(out, /^client sent +\{"max_msg_fds":16,"max_data_xfer_size":1048576,"migration":\{"x-precopy-info":\{\},"x-deadline-state":\{\},"x-arc-latency":\{\},"x-migration-identity":\{\},"x-client-mmaps":\{\}\}\}$/m);
    assert.match(out, /^server sent +\{.*"max_data_xfer_size":\d+.*\}$/m);
    assert.match(out, /^server caps +max_msg_fds=\d+ max_data_xfer_size=\d+ max_dma_maps=\d+ pgsizes=0x1000 migration=pgsize 4096 twin_socket=no write_multiple=(yes|no)$/m);
    assert.match(out, /^device +flags 0x3 \(RESET PCI\), 9 regions, 5 IRQ indexes$/m);
    assert.match(out, /^pci +RAM memory \[0500\]: Device \[1234:5a01\]$/m);
    assert.match(out, /^subsystem +none \(0000\)$/m);
    assert.match(out, /^migration +state RUNNING, flags 0x7 \(STOP_COPY P2P PRE_COPY\)$/m);
    assert.match(out, /^extensions +x-precopy-info=0x8000 x-deadline-state=0x8001 x-arc-latency=0x8002 x-migration-identity=0x8003$/m);
    assert.match(out, /^identity +type "memory", state version 2$/m);
    assert.match(out, /^ {2}0 +BAR0 +0x100000 \(1M\) +R W MMAP CAPS +0x0 +0x0\+0x100000$/m, 'the shared BAR with its sparse area');
    assert.match(out, /^ {2}2 +BAR2 +0x100 \(256\) +R W +- +-$/m);
    assert.match(out, /^ {2}7 +CONFIG +0x100 \(256\) +R W/m);
    assert.match(out, /^ {2}2 +MSIX +0 +EVENTFD$/m);
  });

  it('works against the DMA engine (MSI-X with 2 vectors, 4 KiB config space)', async () => {
    const dma = serve(createDmaEngineDevice().device);
    try {
      const r = await runCli(['info', dma.path, '--json']);
      assert.equal(r.code, 0, r.stderr);
      const info = JSON.parse(r.stdout) as InfoJson;
      assert.equal(info.irqs[2]?.count, 2);
      assert.deepEqual([info.pci.vendorId, info.pci.deviceId, info.pci.classCode, info.pci.subsystemTitle], [0x1234, 0x5a02, 0x088000, null]);
      const m = info.migration;
      assert.deepEqual([m.supported, m.state, m.flags, m.rawFlags], [true, 'RUNNING', ['STOP_COPY', 'P2P'], 3]);
      assert.deepEqual(m.extensions, { 'x-precopy-info': 0x8000, 'x-deadline-state': 0x8001, 'x-arc-latency': 0x8002, 'x-migration-identity': 0x8003 });
      assert.deepEqual([m.identity?.deviceType, m.identity?.stateVersion], ['dma-engine', 1]);
      assert.equal(info.regions[7]?.size, 4096);
    } finally {
      await dma.close();
    }
  });
  it("shows the device's isolation group when the server advertises x-isolation-group (and nothing when it does not)", async () => {
    const plain = await runCli(['info', memory.path]);
    assert.equal(plain.code, 0, plain.stderr);
    assert.doesNotMatch(plain.stdout, /^group/m);
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-info-group-'));
    const gpio = createGpioDevice();
    const member = (uuid: string, state: 'active' | 'inactive') => ({ uuid, socket: join(dir, `${uuid}.sock`), state, claimed: false });
    const group = new IsolationGroupState({ group: 'bank/card=c1', generation: 7, viable: false, owner: null, members: [member('a1', 'active'), member('b2', 'inactive')], self: 'a1' });
    const server = gpio.device.serve({ path: join(dir, 'a1.sock'), isolationGroup: group });
    try {
      const text = await runCli(['info', join(dir, 'a1.sock')]);
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, /^group +bank\/card=c1: NOT viable, no owner, generation 7; members a1\* active, b2 inactive$/m);
      const json = JSON.parse((await runCli(['info', join(dir, 'a1.sock'), '--json'])).stdout) as { isolationGroup?: { group: string; members: unknown[] } };
      assert.equal(json.isolationGroup?.group, 'bank/card=c1');
      assert.equal(json.isolationGroup?.members.length, 2);
    } finally {
      await server.close();
      gpio.device.dispose();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
