/**
 * Device-author mistakes in region callbacks are logged at warn (once per kind
 * and region, later ones at debug), naming the device and the region; the
 * client's request fails as before. Deliberate refusals (an errno) are not warned about.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { InvalidArgumentError, RemoteError } from '../../src/errors.js';
import { RegionIndex } from '../../src/protocol/constants.js';
import type { Logger } from '../../src/log.js';
import { testDeviceDefinition, withServedClient } from '../support/server-fixture.js';

interface Record {
  level: 'error' | 'warn' | 'info' | 'debug';
  fields: { [key: string]: unknown };
  msg: string;
}

/** A logger keeping every record, with its bindings merged in. */
function recordingLogger(records: Record[], bindings: { [key: string]: unknown } = {}): Logger {
  const at = (level: Record['level']) => (obj: object, msg?: string) => void records.push({ level, fields: { ...bindings, ...obj }, msg: msg ?? '' });
  return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug'), child: (more) => recordingLogger(records, { ...bindings, ...more }) };
}

const EINVAL = 22;
const EIO = 5;

async function refused(p: Promise<unknown>, errno: number): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof RemoteError && e.errno === errno);
}

describe('region callback mistakes are logged at warn', () => {
  it('a read callback returning short data: one warn naming device and region, then debug only', async () => {
    const records: Record[] = [];
    const regs = new Uint8Array(16); // a 16-byte register file behind a 4 KiB BAR: the README's old mistake
    const definition = testDeviceDefinition({ name: 'short-dev', logger: recordingLogger(records) });
    definition.regions = { ...definition.regions, bar0: { size: 4096, read: (o, n) => regs.slice(o, o + n) } };
    await withServedClient(definition, async (client) => {
      assert.deepEqual(await client.regionRead(RegionIndex.BAR0, 0n, 4), new Uint8Array(4), 'an access inside the 16 bytes works');
      assert.equal(records.filter((r) => r.level === 'warn').length, 0, 'nothing to report yet');
      await refused(client.regionRead(RegionIndex.BAR0, 0x100n, 4), EINVAL);
      await refused(client.regionRead(RegionIndex.BAR0, 0x200n, 8), EINVAL);
    });
    const warns = records.filter((r) => r.level === 'warn');
    assert.equal(warns.length, 1, 'the second short read is not warned about again');
    const [warn] = warns;
    assert.equal(warn?.fields.device, 'short-dev');
    assert.equal(warn?.fields.region, 'BAR0');
    assert.equal(warn?.fields.mistake, 'short-read');
    assert.equal(warn?.fields.returned, 0);
    assert.match(warn?.msg ?? '', /^BAR0 read callback returned 0 bytes for a 4-byte read at 0x100: the client gets EINVAL/);
    const later = records.filter((r) => r.level === 'debug' && r.fields.mistake === 'short-read');
    assert.equal(later.length, 1, 'the repeat goes to debug');
    assert.equal(later[0]?.fields.offset, 0x200);
  });

  it('a read callback that throws a TypeError (no errno): warn, client gets EIO; a deliberate EINVAL is not warned about', async () => {
    const records: Record[] = [];
    const definition = testDeviceDefinition({ name: 'buggy-dev', logger: recordingLogger(records) });
    definition.regions = {
      ...definition.regions,
      bar0: {
        size: 4096,
        read: (o) => {
          if (o === 0) throw new InvalidArgumentError('offset 0 is write-only');
          return (undefined as unknown as { x: Uint8Array }).x;
        },
        write: async (o) => {
          if (o === 8) throw new Error('oops');
        },
      },
    };
    await withServedClient(definition, async (client) => {
      await refused(client.regionRead(RegionIndex.BAR0, 0n, 4), EINVAL);
      assert.equal(records.filter((r) => r.level === 'warn').length, 0, 'an errno-carrying refusal is the device speaking, not a mistake');
      await refused(client.regionRead(RegionIndex.BAR0, 4n, 4), EIO);
      await refused(client.regionWrite(RegionIndex.BAR0, 8n, new Uint8Array(4)), EIO);
      await client.regionWrite(RegionIndex.BAR0, 12n, new Uint8Array(4));
    });
    const warns = records.filter((r) => r.level === 'warn');
    assert.deepEqual(warns.map((w) => w.fields.mistake), ['read-threw', 'write-threw']);
    assert.match(warns[0]?.msg ?? '', /^BAR0 read callback threw TypeError: .* the client gets EIO/);
    assert.match(warns[1]?.msg ?? '', /^BAR0 write callback threw Error: oops \(at 0x8, 4 bytes\)/);
    assert.ok(warns.every((w) => w.fields.device === 'buggy-dev'));
  });

  it('a read callback resolving to something that is not a Uint8Array: warn not-bytes', async () => {
    const records: Record[] = [];
    const definition = testDeviceDefinition({ logger: recordingLogger(records) });
    definition.regions = { ...definition.regions, bar1: { size: 64, read: async () => [1, 2, 3, 4] as unknown as Uint8Array } };
    await withServedClient(definition, async (client) => {
      await refused(client.regionRead(RegionIndex.BAR1, 0n, 4), EINVAL);
    });
    const warns = records.filter((r) => r.level === 'warn');
    assert.equal(warns.length, 1);
    assert.equal(warns[0]?.fields.region, 'BAR1');
    assert.equal(warns[0]?.fields.returned, 'Array');
    assert.match(warns[0]?.msg ?? '', /^BAR1 read callback returned Array, not a Uint8Array/);
  });
});

describe('config-space vendor area callbacks', () => {
  it('a short read and an async callback: warn naming CONFIG; the async one is refused without an unhandled rejection', async () => {
    const records: Record[] = [];
    const definition = testDeviceDefinition({
      name: 'cfg-dev',
      logger: recordingLogger(records),
      configVendorArea: {
        read: (_o, n) => new Uint8Array(n > 1 ? n - 1 : n),
        write: async () => Promise.reject(new Error('async write')),
      },
    });
    await withServedClient(definition, async (client) => {
      await refused(client.regionRead(RegionIndex.CONFIG, 0xc0n, 4), EINVAL);
      await refused(client.regionWrite(RegionIndex.CONFIG, 0xc0n, new Uint8Array(4)), EINVAL);
      await new Promise((resolve) => setImmediate(resolve)); // an unhandled rejection would fail the test run here
    });
    const warns = records.filter((r) => r.level === 'warn');
    assert.deepEqual(warns.map((w) => [w.fields.region, w.fields.mistake]), [['CONFIG', 'short-read'], ['CONFIG', 'write-threw']]);
    assert.match(warns[0]?.msg ?? '', /^CONFIG read callback returned 3 bytes for a 4-byte read at 0xc0/);
  });
});
