/** `vfio-user read` / `write`: widths, counts, little-endian values, --json, and errors. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createDmaEngineDevice, DMA_ENGINE_ID, DmaEngineReg } from '../../src/devices/dma-engine.js';
import { createRichDevice, runCli, serve, stderrLines, type Served } from './support.js';

describe('vfio-user read / write', () => {
  let dma: Served;
  let rich: Served;
  before(() => {
    dma = serve(createDmaEngineDevice().device);
    rich = serve(createRichDevice());
  });
  after(async () => {
    await dma.close();
    await rich.close();
  });

  it('reads a register as one hex value', async () => {
    const r = await runCli(['read', dma.path, 'bar0', '0']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `0x${DMA_ENGINE_ID.toString(16).padStart(8, '0')}\n`);
    assert.equal(r.stderr, '');
  });

  it('reads little-endian values of every width, and rows of them with --count', async () => {
    const cases: Array<[string[], string]> = [
      [['--width', '1'], '0x44\n'],
      [['--width', '2'], '0x4d44\n'],
      [['--width', '8'], '0x0000000001414d44\n'],
      [['--width', '1', '--count', '4'], '0x0000: 44 4d 41 01\n'],
      [['--count', '6'], '0x0000: 01414d44 00000000 00000000 00000000\n0x0010: 00000000 00000000\n'],
    ];
    for (const [options, expected] of cases) {
      const r = await runCli(['read', dma.path, 'BAR0', '0x0', ...options]);
      assert.equal(r.code, 0, `${options.join(' ')}: ${r.stderr}`);
      assert.equal(r.stdout, expected, options.join(' '));
    }
  });

  it('accepts region names, indexes and 0x/decimal offsets', async () => {
    const byName = await runCli(['read', rich.path, 'config', '0', '--width', '2']);
    const byIndex = await runCli(['read', rich.path, '7', '0x0', '--width', '2']);
    const cfg = await runCli(['read', rich.path, 'CONFIG', '2', '--width', '2']);
    assert.equal(byName.stdout, '0x1af4\n');
    assert.equal(byIndex.stdout, '0x1af4\n');
    assert.equal(cfg.stdout, '0x10f0\n');
    const rom = await runCli(['read', rich.path, 'rom', '2044']);
    assert.equal(rom.stdout, '0xeeeeeeee\n');
  });

  it('writes little-endian (read back: this BAR0 is plain memory that survives the reset at disconnect)', async () => {
    const w = await runCli(['write', rich.path, 'bar0', '0x10', '0x1122334455667788', '--width', '8']);
    assert.equal(w.code, 0, w.stderr);
    assert.equal(w.stdout, 'wrote 0x1122334455667788 to BAR0+0x10 (8 bytes)\n');
    const r = await runCli(['read', rich.path, 'bar0', '0x10', '--width', '1', '--count', '8']);
    assert.equal(r.stdout, '0x0010: 88 77 66 55 44 33 22 11\n');
    const w2 = await runCli(['write', rich.path, 'bar0', '16', '65535', '--width', '2', '--json']);
    assert.deepEqual(JSON.parse(w2.stdout), { region: 0, regionName: 'BAR0', offset: 16, width: 2, value: '0xffff', ok: true });
    const r2 = await runCli(['read', rich.path, 'bar0', '0x10', '--json', '--count', '2']);
    assert.deepEqual(JSON.parse(r2.stdout), {
      region: 0,
      regionName: 'BAR0',
      offset: 16,
      width: 4,
      count: 2,
      values: ['0x5566ffff', '0x11223344'],
      data: 'ffff665544332211',
    });
  });

  it('a write reaches the device register', async () => {
    const engine = createDmaEngineDevice();
    const served = serve(engine.device);
    try {
      const w = await runCli(['write', served.path, 'bar0', String(DmaEngineReg.RING_SIZE), '16']);
      assert.equal(w.code, 0, w.stderr);
      // the session's end resets the engine; what the write did is visible in its trace reply
      const t = await runCli(['--trace', 'write', served.path, 'bar0', '0x14', '0x20']);
      assert.match(t.stderr, /→ REGION_WRITE #\d+ region=0 off=0x14 count=4 data=20 00 00 00/);
      assert.match(t.stderr, /← REGION_WRITE #\d+ ok count=4/);
    } finally {
      await served.close();
    }
  });

  it('errors: exit 1, one line on stderr, the server\'s errno name for refused accesses', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['read', dma.path, 'bar0', '0x1000'], /^vfio-user: read bar0 0x1000: BAR0 is 4K: 0x1000\+4 is beyond its end$/],
      [['read', dma.path, 'bar0', '0xff8', '--count', '4'], /^vfio-user: read bar0 0x1000: BAR0 is 4K: 0x1000\+4 is beyond its end$/],
      [['read', dma.path, 'bar1', '0'], /^vfio-user: read bar1 0x0: BAR1 is not implemented by this device$/],
      [['read', dma.path, '42', '0'], /^vfio-user: read region42 0x0: this device has no region 42 \(it has 9\)$/],
      [['write', rich.path, 'rom', '0', '1'], /^vfio-user: write rom 0x0: ROM is not writable$/],
      [['read', dma.path, 'bar9', '0'], /^vfio-user: REGION: 'bar9' is not a region \(bar0\.\.bar5, rom, config, vga or an index\)$/],
      [['read', dma.path, 'bar0', '0xzz'], /^vfio-user: OFFSET: '0xzz' is not a number \(decimal or 0x-hex\)$/],
      [['read', dma.path, 'bar0', '-4'], /^vfio-user: OFFSET: '-4' is not a number/],
      [['read', dma.path, 'bar0', '0', '--width', '3'], /^vfio-user: --width: '3' is not 1, 2, 4 or 8$/],
      [['read', dma.path, 'bar0', '0', '--count', '0'], /^vfio-user: --count: must be at least 1$/],
      [['write', dma.path, 'bar0', '0', '0x100', '--width', '1'], /^vfio-user: VALUE: 0x100 does not fit in 1 byte\(s\)$/],
      [['write', dma.path, 'bar0', '0', 'lots'], /^vfio-user: VALUE: 'lots' is not a number/],
      [['read', dma.path, 'bar0', '0x10000000000000000'], /^vfio-user: OFFSET: 0x10000000000000000 is larger than 0xffffffffffffffff$/],
    ];
    for (const [args, expected] of cases) {
      const r = await runCli(args); // one at a time: the server serves one client at a time
      assert.equal(r.code, 1, args.join(' '));
      assert.equal(r.stdout, '', args.join(' '));
      const lines = stderrLines(r);
      assert.equal(lines.length, 1, `${args.join(' ')}: ${r.stderr}`);
      assert.match(lines[0] ?? '', expected);
    }
  });
});
