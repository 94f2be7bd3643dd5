/**
 * Plugins in the relay: verdicts (reply, error, drop, disconnect, forward
 * with changes), order of hooks and of messages behind an asynchronous hook,
 * the mediator's own requests to either side, and every way a plugin can fail
 * (throw, reject, a value that is no verdict, a failing onSessionStart /
 * onSessionEnd, a throwing tap) — an error reply or a log line, never a crash.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createGpioDevice } from '../../src/devices/gpio.js';
import { createDmaEngineDevice } from '../../src/devices/dma-engine.js';
import { Command, DmaMapFlags } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import { decodeRegionReadReply, encodeRegionAccess } from '../../src/protocol/region-access.js';
import { decodeDeviceInfo } from '../../src/protocol/device.js';
import { decodeDmaReadReply, encodeDmaAccess, encodeDmaAccessWithData, encodeDmaMapRequest } from '../../src/protocol/dma.js';
import { InvalidArgumentError, RemoteError, StateError } from '../../src/errors.js';
import { loadPlugins } from '../../src/mediator/plugin-loader.js';
import type { Logger } from '../../src/log.js';
import type { MediatedMessage, MediatorPlugin, MediatorSessionContext, MediatorTap } from '../../src/mediator/types.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { StepClient } from '../support/step-client.js';
import { mediate, waitFor } from './support.js';

const INFO = new Uint8Array([16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // DEVICE_GET_INFO, argsz 16
const readBar2 = (offset = 0): Uint8Array => encodeRegionAccess({ region: 2, offset: BigInt(offset), count: 1 });

/** A logger that keeps what was logged at error/warn. */
function recordingLogger(): Logger & { lines: { level: string; obj: object; msg?: string }[] } {
  const lines: { level: string; obj: object; msg?: string }[] = [];
  const make = (): Logger => ({
    error: (obj, msg) => void lines.push({ level: 'error', obj, ...(msg === undefined ? {} : { msg }) }),
    warn: (obj, msg) => void lines.push({ level: 'warn', obj, ...(msg === undefined ? {} : { msg }) }),
    info: () => {},
    debug: () => {},
    child: () => make(),
  });
  return Object.assign(make(), { lines });
}

/** Runs `fn` with a StepClient connected through a mediator (gpio upstream) with `plugins`. */
async function withPlugins(plugins: MediatorPlugin[], fn: (client: StepClient, log: ReturnType<typeof recordingLogger>) => Promise<void>, taps: MediatorTap[] = []): Promise<void> {
  await assertNoFdLeak(async () => {
    const log = recordingLogger();
    const m = await mediate(createGpioDevice().device, { plugins, taps, log });
    try {
      const { client } = await StepClient.open(m.path);
      try {
        await fn(client, log);
      } finally {
        client.close();
      }
    } finally {
      await m.close();
    }
  });
}

describe('mediator plugins', () => {
  it('answers a command locally, rewrites a reply, refuses with an errno, forwards a changed request', () =>
    withPlugins(
      [
        {
          name: 'rewrite',
          onClientCommand(msg) {
            if (msg.header.cmd === Command.DEVICE_RESET) return { error: Errno.EPERM };
            if (msg.header.cmd === Command.REGION_READ && msg.payload[0] === 0) return undefined; // offset 0: forwarded
            if (msg.header.cmd === Command.REGION_READ && msg.payload[0] === 1) return { forward: { payload: readBar2(0) } };
            if (msg.header.cmd === Command.REGION_READ) return { reply: { payload: new Uint8Array([7, 7]) } };
            return undefined;
          },
          onUpstreamReply(reply, request) {
            if (request.header.cmd !== Command.DEVICE_GET_INFO) return undefined;
            const info = decodeDeviceInfo(reply.payload);
            const payload = new Uint8Array(reply.payload);
            new DataView(payload.buffer).setUint32(12, info.numIrqs + 1, true);
            return { forward: { payload } };
          },
        },
      ],
      async (client) => {
        const info = decodeDeviceInfo((await client.ok(Command.DEVICE_GET_INFO, INFO)).payload);
        assert.equal(info.numIrqs, 5 + 1, 'the reply was rewritten (a PCI device has 5 IRQ indexes)');
        await client.fails(Command.DEVICE_RESET, undefined, Errno.EPERM);
        const forwarded = decodeRegionReadReply((await client.ok(Command.REGION_READ, readBar2(0))).payload);
        const changed = decodeRegionReadReply((await client.ok(Command.REGION_READ, readBar2(1))).payload);
        assert.deepEqual(changed?.offset, 0n, 'the request went upstream as rewritten (offset 0)');
        assert.deepEqual(changed?.data, forwarded?.data);
        assert.deepEqual((await client.ok(Command.REGION_READ, readBar2(2))).payload, new Uint8Array([7, 7]));
      },
    ));

  it('turns a throw into EIO, a rejection with an errno into that errno, a non-verdict into EIO — and logs each', () =>
    withPlugins(
      [
        {
          name: 'faulty',
          onClientCommand(msg) {
            if (msg.header.cmd !== Command.REGION_READ) return undefined;
            if (msg.payload[0] === 0) throw new Error('plugin bug');
            if (msg.payload[0] === 1) return Promise.reject(new StateError('not now', { errno: Errno.EBUSY }));
            if (msg.payload[0] === 2) return { bogus: true } as never;
            return undefined;
          },
        },
      ],
      async (client, log) => {
        await client.fails(Command.REGION_READ, readBar2(0), Errno.EIO);
        await client.fails(Command.REGION_READ, readBar2(1), Errno.EBUSY);
        await client.fails(Command.REGION_READ, readBar2(2), Errno.EIO);
        await client.ok(Command.REGION_READ, readBar2(3));
        const failures = log.lines.filter((l) => l.msg === 'plugin hook failed: error reply');
        assert.equal(failures.length, 3);
        assert.ok(failures.every((l) => (l.obj as { plugin: string }).plugin === 'faulty'));
      },
    ));

  it('a failing reply hook gives the client an error reply; a failing upstream-command hook answers the device', () =>
    withPlugins(
      [
        {
          name: 'reply-fails',
          onUpstreamReply(_reply, request) {
            if (request.header.cmd === Command.DEVICE_GET_INFO) throw Object.assign(new Error('bad'), { errno: Errno.ENODEV });
            return undefined;
          },
        },
      ],
      async (client) => {
        await client.fails(Command.DEVICE_GET_INFO, INFO, Errno.ENODEV);
        await client.ok(Command.REGION_READ, readBar2(0));
      },
    ));

  it('drops a command (no reply) and disconnects on request', () =>
    withPlugins(
      [
        {
          name: 'drop-and-cut',
          onClientCommand(msg) {
            if (msg.header.cmd === Command.REGION_READ) return { drop: true };
            if (msg.header.cmd === Command.DEVICE_RESET) return { disconnect: true };
            return undefined;
          },
        },
      ],
      async (client) => {
        const dropped = client.post(Command.REGION_READ, readBar2(0));
        await client.ok(Command.DEVICE_GET_INFO, INFO);
        assert.ok(!client.replies.some((r) => r.msgId === dropped), 'no reply to the dropped command');
        client.post(Command.DEVICE_RESET);
        assert.equal(await client.closed, undefined, 'the client was closed');
      },
    ));

  it('keeps order behind an asynchronous hook: later commands wait, replies leave in order', () =>
    withPlugins(
      [
        {
          name: 'slow-first',
          async onClientCommand(msg) {
            if (msg.header.cmd === Command.REGION_READ && msg.payload[0] === 0) await new Promise((r) => setTimeout(r, 50));
            return undefined;
          },
        },
      ],
      async (client) => {
        const ids = [0, 1, 2, 3, 0, 1].map((o) => client.post(Command.REGION_READ, readBar2(o)));
        await Promise.all(ids.map((id) => client.replyTo(id)));
        assert.deepEqual(client.replies.slice(-6).map((r) => r.msgId), ids);
      },
    ));

  it("sends the mediator's own commands upstream: the reply is the plugin's, never the client's", () => {
    let seen: MediatedMessage | undefined;
    return withPlugins(
      [
        {
          name: 'own-requests',
          async onClientCommand(msg, ctx) {
            if (msg.header.cmd !== Command.DEVICE_RESET) return undefined;
            seen = await ctx.upstreamRequest(Command.REGION_READ, readBar2(0));
            await assert.rejects(ctx.upstreamRequest(Command.REGION_READ, encodeRegionAccess({ region: 77, offset: 0n, count: 1 })), (e: unknown) => e instanceof RemoteError && e.errno === Errno.EINVAL);
            return { reply: {} };
          },
        },
      ],
      async (client) => {
        const before = client.replies.length;
        await client.ok(Command.DEVICE_RESET);
        assert.equal(client.replies.length, before + 1, 'only the reply to its own command');
        assert.ok(seen && decodeRegionReadReply(seen.payload)?.data.length === 1);
      },
    );
  });

  it('sends DMA_READ to the client on its behalf (clientRequest)', () =>
    assertNoFdLeak(async () => {
      let ctxOf: MediatorSessionContext | undefined;
      const engine = createDmaEngineDevice();
      const m = await mediate(engine.device, { plugins: [{ name: 'dma-probe', onSessionStart: (ctx) => void (ctxOf = ctx) }] });
      try {
        const { client } = await StepClient.open(m.path);
        try {
          client.onServerCommand = (msg) => {
            assert.equal(msg.header.cmd, Command.DMA_READ);
            return encodeDmaAccessWithData({ addr: 0x1000n, count: 4n, data: new Uint8Array([1, 2, 3, 4]) });
          };
          await client.ok(Command.DMA_MAP, encodeDmaMapRequest({ argsz: 32, flags: DmaMapFlags.READ, offset: 0n, addr: 0x1000n, size: 0x1000n }));
          const reply = await (ctxOf as MediatorSessionContext).clientRequest(Command.DMA_READ, encodeDmaAccess({ addr: 0x1000n, count: 4n }));
          assert.deepEqual(decodeDmaReadReply(reply.payload).data, new Uint8Array([1, 2, 3, 4]));
          assert.equal(client.serverCommands.length, 1);
        } finally {
          client.close();
        }
      } finally {
        await m.close();
      }
    }));

  it('closes the session when onSessionStart fails, logs a failing onSessionEnd, removes a throwing tap', async () => {
    await withPlugins(
      [{ name: 'end-fails', onSessionEnd: () => { throw new Error('end bug'); } }],
      async (client, log) => {
        await client.ok(Command.DEVICE_GET_INFO, INFO);
        await client.ok(Command.DEVICE_GET_INFO, INFO);
        assert.equal(log.lines.filter((l) => l.msg === 'a tap threw: removed from this session').length, 1, 'the tap was removed after its first throw');
      },
      [{ onMessage: () => { throw new Error('tap bug'); } }],
    );
    await assertNoFdLeak(async () => {
      const log = recordingLogger();
      const m = await mediate(createGpioDevice().device, { plugins: [{ name: 'start-fails', onSessionStart: () => Promise.reject(new Error('no')) }], log });
      try {
        const client = await StepClient.connect(m.path);
        assert.equal(await client.closed, undefined, 'the client is closed');
        await waitFor(() => m.mediator.sessionCount === 0, 'the session to end');
        assert.ok(log.lines.some((l) => l.msg === 'plugin onSessionStart failed: session closed'));
      } finally {
        await m.close();
      }
    });
  });
});


describe('loadPlugins', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-plugins-'));
  const write = (name: string, text: string): string => {
    writeFileSync(join(dir, name), text);
    return `./${name}`;
  };
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('takes `plugin` (one or an array), `createPlugin(args)` (async too) or a default export', async () => {
    const one = write('one.mjs', "export const plugin = { name: 'one' };\n");
    const many = write('many.mjs', "export const plugin = [{ name: 'a' }, { name: 'b' }];\n");
    const factory = write('factory.mjs', "export async function createPlugin(args) { return { name: `f-${args.join('-')}` }; }\n");
    const byDefault = write('default.mjs', "export default (args) => [{ name: 'd' + args.length }];\n");
    assert.deepEqual((await loadPlugins(one, [], dir)).map((p) => p.name), ['one']);
    assert.deepEqual((await loadPlugins(many, [], dir)).map((p) => p.name), ['a', 'b']);
    assert.deepEqual((await loadPlugins(factory, ['x', 'y'], dir)).map((p) => p.name), ['f-x-y']);
    assert.deepEqual((await loadPlugins(byDefault, ['1'], dir)).map((p) => p.name), ['d1']);
  });

  it('fails with one line naming the module: missing (ENOENT), no plugin, no name, empty, a throwing factory (its errno)', async () => {
    const cases: [string, number, RegExp][] = [
      ['./absent.mjs', Errno.ENOENT, /no such file/],
      [write('none.mjs', 'export const other = 1;\n'), Errno.EINVAL, /exports none of plugin, createPlugin, default \(exports: other\)/],
      [write('nameless.mjs', 'export const plugin = { onClientCommand() {} };\n'), Errno.EINVAL, /has no name/],
      [write('empty.mjs', 'export const plugin = [];\n'), Errno.EINVAL, /empty array/],
      [write('number.mjs', 'export default 42;\n'), Errno.EINVAL, /gave number/],
      [write('throws.mjs', "export function createPlugin() { throw Object.assign(new Error('no config'), { errno: 2 }); }\n"), Errno.EINVAL, /its factory failed: no config/],
      [write('syntax.mjs', 'export const plugin = {\n'), Errno.EINVAL, /cannot load mediator plugin/],
    ];
    for (const [spec, errno, message] of cases) {
      await assert.rejects(loadPlugins(spec, [], dir), (e: unknown) => {
        assert.ok(e instanceof InvalidArgumentError, String(e));
        assert.equal(e.errno, errno, `${spec}: ${e.message}`);
        assert.match(e.message, message);
        assert.ok(e.message.includes(spec), `names the module: ${e.message}`);
        assert.equal(e.message.split('\n').length, 1);
        return true;
      });
    }
  });

  it('a factory throwing a VfioUserError keeps its errno', async () => {
    const spec = write('busy.mjs', `import { StateError } from ${JSON.stringify(new URL('../../src/errors.js', import.meta.url).href)};\nexport function createPlugin() { throw new StateError('device busy', { errno: 16 }); }\n`);
    await assert.rejects(loadPlugins(spec, [], dir), (e: unknown) => e instanceof InvalidArgumentError && e.errno === Errno.EBUSY);
  });
});
