import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from '../../src/protocol/constants.js';
import { decodeRegionReadReply, encodeRegionAccess, encodeRegionAccessWithData } from '../../src/protocol/region-access.js';
import { StepClient } from '../support/step-client.js';

const EXAMPLE = fileURLToPath(new URL('../../examples/counter-device.js', import.meta.url));

describe('examples/counter-device', () => {
  it('runs as a process, counts, and removes its socket on SIGINT', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-example-'));
    const path = join(dir, 'counter.sock');
    const child = spawn(process.execPath, [EXAMPLE, path], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const [line] = (await once(child.stdout, 'data')) as [Buffer];
      assert.match(line.toString(), /counter device on/);
      const { client } = await StepClient.open(path);
      const add = (n: number): Uint8Array => encodeRegionAccessWithData({ offset: 0n, region: 0, count: 4, data: Uint8Array.of(n, 0, 0, 0) });
      await client.ok(Command.REGION_WRITE, add(5));
      await client.ok(Command.REGION_WRITE, add(7));
      const r = await client.ok(Command.REGION_READ, encodeRegionAccess({ offset: 0n, region: 0, count: 4 }));
      assert.deepEqual([...decodeRegionReadReply(r.payload)!.data], [12, 0, 0, 0]);
      const far = await client.ok(Command.REGION_READ, encodeRegionAccess({ offset: 0xffcn, region: 0, count: 4 }));
      assert.deepEqual([...decodeRegionReadReply(far.payload)!.data], [0, 0, 0, 0], 'every offset of the 4 KiB BAR reads');
      client.close();
      child.kill('SIGINT');
      const [code] = (await once(child, 'exit')) as [number];
      assert.equal(code, 0);
      assert.equal(existsSync(path), false);
    } finally {
      child.kill();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
