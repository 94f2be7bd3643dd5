/** `--trace`: one decoded line per message on stderr, with relative times and reply latencies. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createDmaEngineDevice } from '../../src/devices/dma-engine.js';
import { formatTraceEvent } from '../../src/cli/trace.js';
import { Command, HeaderFlags } from '../../src/protocol/constants.js';
import { encodeRegionAccess } from '../../src/protocol/region-access.js';
import { runCli, serve, type Served } from './support.js';

const TIME = String.raw`\+\d+\.\d{3}ms`;

describe('vfio-user --trace', () => {
  let dma: Served;
  before(() => {
    dma = serve(createDmaEngineDevice().device);
  });
  after(() => dma.close());

  it('prints every request and reply of `read`, decoded, on stderr; stdout stays the result', async () => {
    const r = await runCli(['--trace', 'read', dma.path, 'bar0', '0x0', '--count', '2']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '0x0000: 01414d44 00000000\n');
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 6, r.stderr);
    assert.match(lines[0] ?? '', new RegExp(`^${TIME} → VERSION #1 0\\.2 \\{"max_msg_fds":16,"max_data_xfer_size":1048576,"migration":\\{"x-precopy-info":\\{\\},"x-deadline-state":\\{\\},"x-arc-latency":\\{\\},"x-migration-identity":\\{\\},"x-client-mmaps":\\{\\}\\}\\}$`));
    assert.match(lines[1] ?? '', new RegExp(`^${TIME} ← VERSION #1 ok 0\\.2 \\{.*\\} \\(\\d+B, [\\d.]+µs\\)$`));
    assert.match(lines[2] ?? '', new RegExp(`^${TIME} → REGION_READ #2 region=0 off=0x0 count=4$`));
    assert.match(lines[3] ?? '', new RegExp(`^${TIME} → REGION_READ #3 region=0 off=0x4 count=4$`));
    assert.match(lines[4] ?? '', new RegExp(`^${TIME} ← REGION_READ #2 ok count=4 data=44 4d 41 01 \\(20B, [\\d.]+µs\\)$`));
    assert.match(lines[5] ?? '', new RegExp(`^${TIME} ← REGION_READ #3 ok count=4 data=00 00 00 00 \\(20B, [\\d.]+µs\\)$`));
    assert.equal(lines[0]?.slice(0, 9), '+0.000ms ', 'times count from the first message');
  });

  it('works after the subcommand too, and shows error replies with their errno', async () => {
    const r = await runCli(['read', dma.path, 'bar0', '0x2000', '--trace']);
    assert.equal(r.code, 1);
    const lines = r.stderr.trimEnd().split('\n');
    assert.match(lines[2] ?? '', /→ REGION_READ #2 region=0 off=0x2000 count=4$/);
    assert.match(lines[3] ?? '', /← REGION_READ #2 error EINVAL 22 \(0B, [\d.]+µs\)$/);
    // Then the CLI asks REGION_INFO why (those messages are traced too) and names the cause last.
    assert.equal(lines.at(-1), 'vfio-user: read bar0 0x2000: BAR0 is 4K: 0x2000+4 is beyond its end');
  });

  it('decodes info\'s region and IRQ queries', async () => {
    const r = await runCli(['--trace', 'info', dma.path, '--json']);
    assert.equal(r.code, 0, r.stderr);
    JSON.parse(r.stdout);
    assert.match(r.stderr, /← DEVICE_GET_INFO #2 ok flags=RESET\|PCI regions=9 irqs=5 \(16B, /);
    assert.match(r.stderr, /→ DEVICE_GET_REGION_INFO #\d+ index=7\n.*← DEVICE_GET_REGION_INFO #\d+ ok index=7 size=0x1000 flags=READ\|WRITE off=0x0 \(32B, /);
    assert.match(r.stderr, /← DEVICE_GET_IRQ_INFO #\d+ ok index=2 count=2 flags=EVENTFD \(16B, /);
  });

  it('an undecodable payload falls back to its size', () => {
    const header = { msgId: 7, cmd: Command.REGION_READ, msgSize: 16 + 3, flags: HeaderFlags.TYPE_REPLY, errorNo: 0 };
    const line = formatTraceEvent({ direction: 'recv', channel: 'main', header, payload: Uint8Array.of(1, 2, 3), fds: 0, timeNs: 1_500_000n, latencyNs: 27_000n }, 1_000_000n);
    assert.equal(line, '+0.500ms ← REGION_READ #7 ok (undecodable) (3B, 27.0µs)');
    const request = { ...header, flags: 0, msgSize: 32 };
    const sent = formatTraceEvent({ direction: 'send', channel: 'twin', header: request, payload: encodeRegionAccess({ offset: 0x40n, region: 7, count: 2 }), fds: 0, timeNs: 1_000_000n }, 1_000_000n);
    assert.equal(sent, '+0.000ms → [twin] REGION_READ #7 region=7 off=0x40 count=2');
  });
});
