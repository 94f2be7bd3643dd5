/**
 * examples/mediated-migration.js, the plugin module for `vfio-user mediate
 * --plugin`: loaded as the CLI loads it (loadPlugins, arguments after `--`),
 * it migrates the ticker; bad arguments are refused with EINVAL.
 */
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { InvalidArgumentError } from '../../src/errors.js';
import { loadPlugins } from '../../src/mediator/plugin-loader.js';
import type { MigrationPlugin } from '../../src/mediator/migration/index.js';
import { migrate } from '../../src/orchestrator/migrate.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { startMediatorChild, waitFor } from './support.js';
import { IOVA, TickerReg, createTicker, openSide, readReg, startTicker, type MediatedSide, type Ticker } from './migration-support.js';

const EXAMPLE = fileURLToPath(new URL('../../examples/mediated-migration.js', import.meta.url));
const GUEST = 4 << 20;
const TICKER_ARGS = ['--device-type', 'ticker', '--register', '0:0x8:8', '--register', '0:0x10:4', '--register', '0:0x14:4', '--register', '0:0x18:4', '--quiesce', '0:0x0:1', '--idle', '0:0x4:1:0'];

async function load(args: string[]): Promise<MigrationPlugin> {
  const [plugin] = await loadPlugins(EXAMPLE, args);
  return plugin as MigrationPlugin;
}

describe('examples/mediated-migration', () => {
  it('migrates the ticker with the plugin the module builds from its arguments', async () => {
    const sides: MediatedSide[] = [];
    try {
      sides.push(await openSide(GUEST, await load(TICKER_ARGS)), await openSide(GUEST, await load(TICKER_ARGS)));
      const [src, dst] = sides as [MediatedSide, MediatedSide];
      await startTicker(src, 64 * 1024, 5);
      await waitFor(() => src.ticker.seq > 10, 'records');
      dst.ticker.hold(true);
      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 2000 });
      assert.equal(report.outcome, 'migrated', report.reason);
      await src.ticker.idle();
      assert.equal(await readReg(dst, TickerReg.SEQ), src.ticker.seq);
      assert.equal(await readReg(dst, TickerReg.CONTROL), 1);
      assert.ok(Buffer.from(dst.memory.read(0n, GUEST)).equals(src.memory.read(0n, GUEST)));
    } finally {
      for (const s of sides) await s.close();
    }
  });

  it('works as `vfio-user mediate --plugin dist/examples/mediated-migration.js -- ARGS` (two mediator processes)', { timeout: 120_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-medmig-cli-'));
    const opened: Array<{ close(): Promise<void> }> = [];
    try {
      const side = async (name: string): Promise<{ ticker: Ticker; client: VfioUserClient; memory: GuestMemory; iova: bigint }> => {
        const ticker = createTicker();
        const server = ticker.device.serve(join(dir, `${name}.sock`));
        const child = await startMediatorChild(join(dir, `${name}.sock`), join(dir, `${name}-med.sock`), ['--plugin', EXAMPLE, '--', ...TICKER_ARGS]);
        const client = await VfioUserClient.connect(join(dir, `${name}-med.sock`));
        const memory = GuestMemory.create(GUEST);
        opened.push({
          async close() {
            client.close();
            assert.deepEqual(await child.stop(), { code: 0, signal: null }, child.output());
            await server.close();
            ticker.device.dispose();
            memory.dispose();
          },
        });
        await memory.attach(client, { iova: IOVA, mode: 'fd' });
        return { ticker, client, memory, iova: IOVA };
      };
      const src = await side('src');
      const dst = await side('dst');
      await startTicker(src, 64 * 1024, 9);
      await waitFor(() => src.ticker.seq > 10, 'records');
      dst.ticker.hold(true);
      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 2000 });
      assert.equal(report.outcome, 'migrated', report.reason);
      await src.ticker.idle();
      assert.equal(dst.ticker.seq, src.ticker.seq, 'SEQ restored in the destination device');
      assert.ok(Buffer.from(dst.memory.read(0n, GUEST)).equals(src.memory.read(0n, GUEST)));
    } finally {
      for (const o of opened.reverse()) await o.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses bad arguments with EINVAL, naming them', async () => {
    const einval = (re: RegExp) => (e: unknown): boolean => e instanceof InvalidArgumentError && e.errno === 22 && re.test(e.message);
    await assert.rejects(load(['--register', '0:8']), einval(/--register '0:8'/));
    await assert.rejects(load(['--idle', '0:4:1:0']), einval(/--idle needs --quiesce/));
    await assert.rejects(load(['--memory', 'some']), einval(/--memory/));
    await assert.rejects(load(['--register', '99:0:4']), einval(/region 99/));
  });
});
