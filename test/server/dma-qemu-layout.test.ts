/**
 * Message-mode DMA with QEMU's client: QEMU's DMA_READ replies and DMA_WRITE
 * requests carry a u32 count with data at byte 12 (its C struct), not the
 * specification's u64 count, and QEMU loses replies larger than its socket
 * buffer. A client recognised as QEMU at VERSION gets its layout and ≤ 64 KiB
 * messages; any other client the specification's layout.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, DmaMapFlags } from '../../src/protocol/constants.js';
import { decodeDmaReadRequest, encodeDmaMapRequest } from '../../src/protocol/dma.js';
import { decodeVersion } from '../../src/protocol/version.js';
import { clientProfile, looksLikeQemu, QEMU_DMA_CHUNK } from '../../src/server/client-profile.js';
import { StepClient } from '../support/step-client.js';
import { serveTestDevice } from '../support/server-fixture.js';
import { qemuVersionRequest } from '../support/qemu-version.js';
import { wb } from '../support/wire-builder.js';

const BASE = 0x100000n;
const GUEST = 512 * 1024;

/** Answers DMA commands as QEMU 10.2's hw/vfio-user/pci.c does, on a guest memory array. */
function actAsQemu(client: StepClient, guest: Uint8Array): void {
  client.onServerCommand = (m) => {
    const view = new DataView(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength);
    const at = Number(view.getBigUint64(0, true) - BASE);
    const count = view.getUint32(8, true);
    if (m.header.cmd === Command.DMA_READ) {
      return wb().u64(BASE + BigInt(at)).u32(count).bytes(guest.subarray(at, at + count)).u32(0).build(); // 16 + count, pad last
    }
    guest.set(m.payload.subarray(12, 12 + count), at);
    return new Uint8Array(0); // QEMU answers DMA_WRITE with a bare header
  };
}

describe('DMA messages to QEMU\'s client', () => {
  it('recognises QEMU\'s VERSION and no other', () => {
    const qemu = decodeVersion(qemuVersionRequest());
    assert.equal(looksLikeQemu(qemu), true);
    assert.equal(looksLikeQemu({ ...qemu, minor: 2 }), false);
    assert.equal(looksLikeQemu({ major: 0, minor: 0, capabilities: { maxMsgFds: 8, migration: { pgsize: 4096 } } }), false);
    assert.equal(looksLikeQemu({ major: 0, minor: 0 }), false);
    assert.equal(clientProfile(qemu).dmaLayout, 'qemu');
    assert.equal(clientProfile(qemu, 'vfio-user').dmaLayout, 'vfio-user');
    assert.equal(clientProfile({ major: 0, minor: 2 }, 'qemu').dmaLayout, 'qemu');
  });

  it('reads and writes guest memory in QEMU\'s layout, in messages of at most 64 KiB', async () => {
    const served = serveTestDevice();
    const client = await StepClient.connect(served.path);
    await client.ok(Command.VERSION, qemuVersionRequest());
    const guest = new Uint8Array(GUEST);
    for (let i = 0; i < guest.length; i++) guest[i] = (i * 7) & 0xff;
    guest.fill(0, 0x1000, 0x1010); // data starting with zeros: where the two layouts' counts agree
    actAsQemu(client, guest);
    await client.ok(Command.DMA_MAP, encodeDmaMapRequest({ argsz: 32, flags: DmaMapFlags.READ | DmaMapFlags.WRITE, offset: 0n, addr: BASE, size: BigInt(GUEST) }));
    const read = await served.device.dma.read(BASE + 0x1000n, 300 * 1024);
    assert.deepEqual(read, guest.subarray(0x1000, 0x1000 + 300 * 1024));
    const data = new Uint8Array(100 * 1024).map((_, i) => (i * 13 + 1) & 0xff);
    await served.device.dma.write(BASE + 0x3000n, data);
    assert.deepEqual(guest.subarray(0x3000, 0x3000 + data.length), data);
    const counts = client.serverCommands.map((m) => (m.header.cmd === Command.DMA_READ ? Number(decodeDmaReadRequest(m.payload).count) : m.payload.length - 16));
    assert.ok(counts.every((n) => n <= QEMU_DMA_CHUNK), `chunks ${counts.join(',')}`);
    assert.equal(counts.length, Math.ceil(300 / 64) + Math.ceil(100 / 64));
    client.close();
    await served.close();
  });

  it('keeps the specification\'s layout for a client that is not QEMU', async () => {
    const served = serveTestDevice();
    const { client } = await StepClient.open(served.path);
    client.onServerCommand = (m) => {
      const a = decodeDmaReadRequest(m.payload);
      return wb().u64(a.addr).u64(a.count).bytes(new Uint8Array(Number(a.count)).fill(0x5a)).build();
    };
    await client.ok(Command.DMA_MAP, encodeDmaMapRequest({ argsz: 32, flags: DmaMapFlags.READ | DmaMapFlags.WRITE, offset: 0n, addr: BASE, size: 0x10000n }));
    const read = await served.device.dma.read(BASE, 0x10000);
    assert.equal(read.every((b) => b === 0x5a), true);
    assert.equal(client.serverCommands.length, 1, 'one message: no QEMU chunk limit');
    client.close();
    await served.close();
  });
});
