/** `vfio-user bench`: the latency/throughput table, --json, the pinning note, and bad arguments. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createMemoryDevice } from '../../src/devices/memory.js';
import { quantile } from '../../src/cli/commands/bench.js';
import { runCli, serve, stderrLines, type Served } from './support.js';

interface BenchJson {
  region: number;
  regionName: string;
  offset: number;
  count: number;
  depth: number;
  cpus: number;
  note: string;
  rows: Array<{ mode: string; size: number; depth: number; requests: number; p50Us: number; p90Us: number; p99Us: number; maxUs: number; meanUs: number; requestsPerSec: number; mbPerSec: number }>;
}

describe('vfio-user bench', () => {
  let memory: Served;
  before(() => {
    memory = serve(createMemoryDevice({ size: 1 << 20 }).device);
  });
  after(() => memory.close());

  it('--json: a latency row (1 in flight), a throughput row (depth in flight) and a large-size row', async () => {
    const r = await runCli(['bench', memory.path, '--count', '300', '--depth', '8', '--large-size', '16K', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as BenchJson;
    assert.deepEqual([j.region, j.regionName, j.offset, j.count, j.depth], [0, 'BAR0', 0, 300, 8]);
    assert.match(j.note, /taskset -c 0/);
    assert.ok(j.cpus >= 1);
    assert.deepEqual(
      j.rows.map((row) => [row.mode, row.size, row.depth]),
      [
        ['latency', 4, 1],
        ['throughput', 4, 8],
        ['throughput', 16384, 8],
      ],
    );
    for (const row of j.rows) {
      assert.ok(row.requests >= 100);
      assert.ok(row.p50Us > 0 && row.p50Us <= row.p90Us && row.p90Us <= row.p99Us && row.p99Us <= row.maxUs, JSON.stringify(row));
      assert.ok(row.requestsPerSec > 0 && row.mbPerSec > 0);
    }
  });

  it('prints a table and says pinning is the user\'s business', async () => {
    const r = await runCli(['bench', memory.path, '--count', '200', '--region', 'bar2', '--offset', '0x1c', '--size', '4', '--large-size', '4']);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.match(lines[0] ?? '', /^REGION_READ of BAR2\+0x1c over /);
    assert.match(lines[1] ?? '', /^mode +bytes +in flight +requests +p50 µs +p90 µs +p99 µs +max µs +req\/s +MB\/s$/);
    assert.match(lines[2] ?? '', /^latency +4 +1 +200 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +\d+ +[\d.]+$/);
    assert.match(lines[3] ?? '', /^throughput +4 +16 +200 /);
    assert.equal(lines.length, 5, 'no large row when --large-size is not larger');
    assert.match(lines[4] ?? '', /^note: .*pinning is your business.*taskset -c 0/);
  });

  it('bad arguments and a region too small fail with one line', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['--depth', '0'], /--depth: must be at least 1/],
      [['--count', 'many'], /--count: 'many' is not a number/],
      [['--region', 'bar3'], /bench: BAR3 is not implemented by this device/],
      [['--region', 'bar2', '--offset', '0x100'], /bench: BAR2 is 256 bytes; no room for 4 bytes at 0x100/],
    ];
    for (const [args, expected] of cases) {
      const r = await runCli(['bench', memory.path, ...args]);
      assert.equal(r.code, 1, args.join(' '));
      const lines = stderrLines(r);
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0] ?? '', expected);
    }
  });

  it('quantile is nearest-rank', () => {
    const v = Float64Array.from({ length: 100 }, (_, i) => i + 1);
    assert.deepEqual([quantile(v, 0.5), quantile(v, 0.9), quantile(v, 0.99), quantile(v, 1)], [50, 90, 99, 100]);
    assert.equal(quantile(new Float64Array(0), 0.5), 0);
    assert.equal(quantile(Float64Array.of(7), 0.99), 7);
  });
});
