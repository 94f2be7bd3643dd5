/**
 * The built-in logger that replaced pino: pino's JSON-lines format, levels,
 * child bindings, errors/bigints/cycles, and `VFIO_USER_LOG` in a real process.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { createJsonLogger, parseLogLevel } from '../../src/log.js';
import { SystemError } from '../../src/errors.js';

/** A logger at `level` whose lines land in the returned array, parsed. */
function capture(level: Parameters<typeof parseLogLevel>[0]) {
  const records: Record<string, unknown>[] = [];
  const raw: string[] = [];
  const logger = createJsonLogger({
    level: parseLogLevel(level),
    write: (line) => {
      raw.push(line);
      records.push(JSON.parse(line) as Record<string, unknown>);
    },
  });
  return { logger, records, raw };
}

describe('built-in JSON logger', () => {
  it('writes one pino-shaped JSON object per line, at or above its level', () => {
    const { logger, records, raw } = capture('info');
    const before = Date.now();
    logger.debug({ a: 1 }, 'dropped');
    logger.info({ a: 1 }, 'kept');
    logger.warn({ b: 'x' });
    logger.error({}, 'bad');
    assert.equal(records.length, 3);
    assert.ok(raw.every((line) => line.endsWith('\n') && line.indexOf('\n') === line.length - 1));
    assert.deepEqual(
      records.map((r) => [r.level, r.msg]),
      [
        [30, 'kept'],
        [40, undefined],
        [50, 'bad'],
      ],
    );
    const first = records[0]!;
    assert.equal(first.name, 'vfio-user');
    assert.equal(first.pid, process.pid);
    assert.equal(typeof first.hostname, 'string');
    assert.ok(typeof first.time === 'number' && first.time >= before);
    assert.equal(first.a, 1);
  });

  it('children carry their bindings (nested), the parent does not', () => {
    const { logger, records } = capture('debug');
    const device = logger.child({ device: 'dma' });
    device.child({ session: 3 }).debug({ cmd: 'VERSION' }, 'x');
    logger.debug({}, 'y');
    assert.deepEqual([records[0]!.device, records[0]!.session, records[0]!.cmd], ['dma', 3, 'VERSION']);
    assert.equal(records[1]!.device, undefined);
  });

  it('writes errors with type, message, stack, errno fields and cause; bigints as strings; cycles cut', () => {
    const { logger, records } = capture('warn');
    const cause = new Error('inner');
    const err = new SystemError('mmap', 12, 'guest RAM', { cause });
    const loop: Record<string, unknown> = { name: 'loop' };
    loop.self = loop;
    logger.warn({ err, iova: 0xffff_ffff_ffff_f000n, loop }, 'failed');
    const record = records[0]!;
    const written = record.err as Record<string, unknown>;
    assert.equal(written.type, 'SystemError');
    assert.equal(written.message, err.message);
    assert.equal(written.errno, err.errno);
    assert.match(String(written.stack), /SystemError/);
    assert.equal((written.cause as Record<string, unknown>).message, 'inner');
    assert.equal(record.iova, '18446744073709547520');
    assert.deepEqual(record.loop, { name: 'loop', self: '[Circular]' });
  });

  it('silent writes nothing; a bad level is refused naming the valid ones', () => {
    const { logger, records } = capture('silent');
    logger.error({}, 'x');
    assert.equal(records.length, 0);
    assert.throws(() => parseLogLevel('verbose'), /VFIO_USER_LOG=verbose: not a level \(trace, debug, info/);
    assert.equal(parseLogLevel(' WARN '), 'warn');
  });

  it('VFIO_USER_LOG=warn turns the default logger on, on stderr; unset, nothing is written', () => {
    const script = `
      const { getDefaultLogger } = await import(${JSON.stringify(new URL('../../src/log.js', import.meta.url).href)});
      const log = getDefaultLogger();
      log.info({}, 'quiet');
      log.warn({ n: 5n }, 'loud');`;
    const run = (env: NodeJS.ProcessEnv) =>
      spawnSync(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, ...env }, encoding: 'utf8' });
    const on = run({ VFIO_USER_LOG: 'warn', VFIO_USER_TRACE: '' });
    assert.equal(on.status, 0, on.stderr);
    assert.equal(on.stdout, '');
    const lines = on.stderr.trim().split('\n');
    assert.equal(lines.length, 1, on.stderr);
    assert.deepEqual(
      (({ level, msg, n }) => ({ level, msg, n }))(JSON.parse(lines[0]!) as Record<string, unknown>),
      { level: 40, msg: 'loud', n: '5' },
    );
    const off = run({ VFIO_USER_LOG: '', VFIO_USER_TRACE: '' });
    assert.equal(off.status, 0, off.stderr);
    assert.equal(off.stderr, '');
  });
});
