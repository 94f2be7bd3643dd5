/**
 * runShellOnSession in-process: a held session (the caller's client and guest
 * RAM stay open and mapped; what the shell set up is undone), the interactive
 * mode (prompt, errors do not end it), and word splitting.
 */
import { afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { PassThrough } from 'node:stream';
import { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { createDmaEngineDevice, DmaEngineReg } from '../../src/devices/dma-engine.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { runShellOnSession } from '../../src/cli/commands/shell.js';
import { splitWords } from '../../src/cli/shell-words.js';
import type { Output } from '../../src/cli/common.js';
import { serve, type Served } from './support.js';

function collector(): Output & { lines: string[]; traces: string[] } {
  const lines: string[] = [];
  const traces: string[] = [];
  return { lines, traces, line: (t) => void lines.push(t), trace: (t) => void traces.push(t) };
}

describe('runShellOnSession', () => {
  let served: Served;
  let client: VfioUserClient;
  beforeEach(async () => {
    served = serve(createDmaEngineDevice().device);
    client = await VfioUserClient.connect(served.path);
  });
  afterEach(async () => {
    client.close();
    await served.close();
  });

  it('drives a held session with its guest RAM, and leaves the client and that RAM as they were', async () => {
    const memory = GuestMemory.create(1 << 20);
    try {
      await memory.attach(client, { iova: 0x4000_0000n });
      memory.write(0x10n, Uint8Array.of(0xaa, 0xbb));
      const out = collector();
      const lines = ['mem-read 0x40000010 --width 2', 'dma-map 64K 0x10000', 'irq-enable msix', `write bar0 ${DmaEngineReg.RING_SIZE} 4`, 'dma-list'];
      const outcome = await runShellOnSession({ socket: served.path, client, memory, iova: 0x4000_0000n }, { lines, out });
      assert.deepEqual(outcome, { commands: 5, failures: 0, disconnected: false });
      assert.equal(out.lines[0], '0xbbaa');
      assert.match(out.lines.join('\n'), /0x10000 +0x1ffff +64K +fd +rw +shell/);
      assert.match(out.lines.join('\n'), /0x40000000 +0x400fffff +1M +fd +rw +session/);
      // after: the shell's own mapping and eventfds are gone, the caller's RAM is still mapped, the device kept its state
      const dma = served.device.dma;
      assert.deepEqual(dma.regions().map((r) => r.addr), [0x4000_0000n], 'only the caller\'s mapping is left');
      assert.equal(memory.attachments.length, 1);
      const ring = await client.regionRead(0, BigInt(DmaEngineReg.RING_SIZE), 4);
      assert.equal(new DataView(ring.buffer, ring.byteOffset).getUint32(0, true), 4, 'no reset: the session is the caller\'s');
    } finally {
      memory.dispose();
    }
  });

  it('interactive: prompts, reports errors and goes on, ends at quit', async () => {
    const input = new PassThrough();
    const terminal = new PassThrough();
    let echoed = '';
    terminal.on('data', (d: Buffer) => void (echoed += d.toString()));
    const out = collector();
    const running = runShellOnSession({ socket: served.path, client }, { input, terminal, interactive: true, out });
    input.write('read bar9 0\n');
    input.write('echo still here\n');
    input.write('quit\n');
    input.write('echo never\n');
    const outcome = await running;
    assert.deepEqual(outcome, { commands: 3, failures: 1, disconnected: false });
    assert.deepEqual(out.lines, ['still here']);
    assert.equal(out.traces.length, 1);
    assert.match(out.traces[0] ?? '', /^error: REGION: 'bar9' is not a region/);
    assert.match(echoed, /vfio-user> /);
  });
});

describe('runShellOnSession, connection lost', () => {
  it('ends at the first command that finds the connection gone, --keep-going or not', async () => {
    const other = serve(createDmaEngineDevice().device);
    const held = await VfioUserClient.connect(other.path);
    try {
      const input = new PassThrough();
      const out = collector();
      const running = runShellOnSession({ socket: other.path, client: held }, { input, interactive: false, keepGoing: true, out });
      input.write('read bar0 0\n');
      while (out.lines.length === 0) await new Promise((r) => setTimeout(r, 10));
      await other.server.close();
      await held.closed;
      input.end('read bar0 0\necho after\n');
      const outcome = await running;
      assert.deepEqual(outcome, { commands: 2, failures: 1, disconnected: true });
      assert.equal(out.lines.length, 1);
      assert.match(out.traces[0] ?? '', /^vfio-user: stdin:2: read bar0 0x0: /);
    } finally {
      held.close();
      other.device.dispose();
      rmSync(other.dir, { recursive: true, force: true });
    }
  });
});

describe('splitWords', () => {
  it('splits on blanks, honours quotes and escapes, drops comments', () => {
    assert.deepEqual(splitWords('  read   bar0 0x10  '), ['read', 'bar0', '0x10']);
    assert.deepEqual(splitWords(`echo "a  b" 'c "d"' e\\ f "g\\"h" ''`), ['echo', 'a  b', 'c "d"', 'e f', 'g"h', '']);
    assert.deepEqual(splitWords('write bar0 0 1 # set it'), ['write', 'bar0', '0', '1']);
    assert.deepEqual(splitWords('echo a#b'), ['echo', 'a#b']);
    assert.deepEqual(splitWords('# only a comment'), []);
    assert.throws(() => splitWords('echo "open'), InvalidArgumentError);
    assert.throws(() => splitWords('echo trailing\\'), InvalidArgumentError);
  });
});
