/**
 * src/cli/values.ts: the one syntax for sizes, for durations and for counts —
 * every accepted form, every rejected one with its one-line message, and the
 * commander options built on them (rejecting at parse time, defaults shown as written).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, CommanderError } from 'commander';
import { InvalidArgumentError } from '../../src/errors.js';
import { countOption, durationOption, MAX_DURATION_MS, parseCount, parseDuration, parseInteger, parseSize, sizeOption } from '../../src/cli/values.js';

const K = 1024;
const M = 1024 * K;
const G = 1024 * M;

function rejects(parse: () => unknown, message: string | RegExp): void {
  assert.throws(parse, (e: unknown) => {
    assert.ok(e instanceof InvalidArgumentError, String(e));
    assert.equal(e.errno, 22);
    if (typeof message === 'string') assert.equal(e.message, message);
    else assert.match(e.message, message);
    return true;
  });
}

describe('parseSize', () => {
  it('accepts bytes and binary K/M/G/T, with or without B/iB, any case, a fraction when whole', () => {
    const cases: Array<[string, number]> = [
      ['4096', 4096], ['4K', 4 * K], ['4KiB', 4 * K], ['4KB', 4 * K], ['4kb', 4 * K], ['4 K', 4 * K], ['64k', 64 * K],
      ['1M', M], ['1MiB', M], ['2mb', 2 * M], ['1.5M', 1.5 * M], ['0.5K', 512], ['1G', G], ['1T', 1024 * G], ['4096B', 4096], [' 16K ', 16 * K],
    ];
    for (const [text, bytes] of cases) assert.equal(parseSize(text, '--size'), bytes, text);
  });

  it('rejects other syntaxes, naming the option and the accepted forms', () => {
    const syntax = (t: string): string => `--size: '${t}' is not a size (bytes with an optional K, M, G or T suffix, K = 1024: 4096, 4K, 64KiB, 1M)`;
    for (const bad of ['', 'K', '4X', '-1K', '0x1000', '1e3', '4 KB/s', 'four', '1P', '1KK']) rejects(() => parseSize(bad, '--size'), syntax(bad));
    rejects(() => parseSize('1.1K', '--size'), "--size: '1.1K' is not a whole number of bytes");
    rejects(() => parseSize('0.5', '--size'), "--size: '0.5' is not a whole number of bytes");
  });

  it('applies min, max and powerOfTwo', () => {
    rejects(() => parseSize('0', '--size'), '--size: must be at least 1');
    rejects(() => parseSize('2M', '--size', { max: M }), '--size: must be at most 1M');
    rejects(() => parseSize('100', '--size', { max: 64 }), '--size: must be at most 64');
    rejects(() => parseSize('3K', '--size', { powerOfTwo: true }), "--size: '3K' is not a power of two (e.g. 4K, 64K, 1M)");
    assert.equal(parseSize('8G', '--size', { powerOfTwo: true }), 8 * G, 'powers of two beyond 32 bits');
    assert.equal(parseSize('0', '--size', { min: 0 }), 0);
  });

  it('takes a per-second suffix only for rates', () => {
    assert.equal(parseSize('200M/s', '--bandwidth', { perSecond: true }), 200 * M);
    assert.equal(parseSize('20MB/s', '--bandwidth', { perSecond: true }), 20 * M);
    assert.equal(parseSize('1000', '--bandwidth', { perSecond: true }), 1000);
    rejects(() => parseSize('200M/s', '--size'), /^--size: '200M\/s' is not a size/);
  });
});

describe('parseDuration', () => {
  it('accepts ms syntax; a plain number is milliseconds', () => {
    const cases: Array<[string, number]> = [['300ms', 300], ['5s', 5000], ['1.5s', 1500], ['250', 250], ['2m', 120_000], ['1h', 3_600_000], ['5 s', 5000], ['10sec', 10_000], ['2 minutes', 120_000]];
    for (const [text, ms] of cases) assert.equal(parseDuration(text, '--timeout'), ms, text);
  });

  it('rejects other syntaxes, negative and out-of-range durations', () => {
    const syntax = (t: string): string => `--timeout: '${t}' is not a duration (e.g. 300ms, 5s, 1.5s, 2m; a plain number is milliseconds)`;
    for (const bad of ['', 'soon', '5x', '-5s', '1e3', 's', 'Infinity', '5s5']) rejects(() => parseDuration(bad, '--timeout'), syntax(bad));
    rejects(() => parseDuration('0', '--timeout'), '--timeout: must be at least 1ms');
    rejects(() => parseDuration('30d', '--timeout'), '--timeout: must be at most 25d');
    rejects(() => parseDuration('2s', '--downtime', { max: 1000 }), '--downtime: must be at most 1s');
    assert.equal(parseDuration('0', '--downtime', { min: 0 }), 0);
    assert.equal(parseDuration(String(MAX_DURATION_MS), '--timeout'), MAX_DURATION_MS);
  });
});

describe('parseCount and parseInteger', () => {
  it('counts: decimal, 0x, 0o, 0b, _ separators', () => {
    const cases: Array<[string, number]> = [['1', 1], ['10000', 10_000], ['0x10', 16], ['0o17', 15], ['0b101', 5], ['100_000', 100_000], ['0X1F', 31]];
    for (const [text, n] of cases) assert.equal(parseCount(text, '--count'), n, text);
  });

  it('counts: rejects non-integers, zero, and values beyond max', () => {
    for (const bad of ['', 'many', '1.5', '-1', '4K', '1e3', '0xg']) rejects(() => parseCount(bad, '--count'), `--count: '${bad}' is not a number (decimal or 0x-hex)`);
    rejects(() => parseCount('0', '--count'), '--count: must be at least 1');
    rejects(() => parseCount('65', '--depth', { max: 64 }), '--depth: must be at most 64');
    rejects(() => parseCount('9007199254740992', '--count'), '--count: 9007199254740992 is larger than 0x1fffffffffffff');
  });

  it('integers: 0 allowed, 64 bits by default, bigint out', () => {
    assert.equal(parseInteger('0', 'OFFSET'), 0n);
    assert.equal(parseInteger('0xffffffffffffffff', 'OFFSET'), (1n << 64n) - 1n);
    rejects(() => parseInteger('0x10000000000000000', 'OFFSET'), 'OFFSET: 0x10000000000000000 is larger than 0xffffffffffffffff');
    rejects(() => parseInteger('0x100', 'VALUE', 0xffn), 'VALUE: 0x100 is larger than 0xff');
  });
});

describe('commander options', () => {
  /** Parses `args` with a program holding `options`; commander's errors come back instead of exiting. */
  function parse(options: ReturnType<typeof sizeOption>[], args: string[]): { opts: Record<string, unknown>; error?: string } {
    let error: string | undefined;
    const program = new Command().exitOverride().configureOutput({ writeErr: (t) => void (error = t.trim()), writeOut: () => undefined });
    for (const o of options) program.addOption(o);
    try {
      program.parse(args, { from: 'user' });
    } catch (e) {
      if (!(e instanceof CommanderError)) throw e;
    }
    return { opts: program.opts(), ...(error === undefined ? {} : { error }) };
  }

  it('deliver numbers; defaults parsed once and shown as written in --help', () => {
    const options = () => [sizeOption('--size <bytes>', 'size', { default: '64K' }), durationOption('--timeout <duration>', 'timeout', { default: '10s' }), countOption('--count <n>', 'count', { default: '16' })];
    assert.deepEqual(parse(options(), []).opts, { size: 64 * K, timeout: 10_000, count: 16 });
    assert.deepEqual(parse(options(), ['--size', '4K', '--timeout', '5s', '--count', '0x20']).opts, { size: 4 * K, timeout: 5000, count: 32 });
    const help = new Command().addOption(sizeOption('--size <bytes>', 'size', { default: '64K' })).helpInformation();
    assert.match(help, /--size <bytes>\s+size \(default: 64K\)/);
  });

  it('reject a bad value at parse time with one line naming the option', () => {
    assert.equal(parse([sizeOption('--size <bytes>', 'size')], ['--size', '4X']).error, "error: option '--size <bytes>' argument '4X' is invalid. It is not a size (bytes with an optional K, M, G or T suffix, K = 1024: 4096, 4K, 64KiB, 1M).");
    assert.equal(parse([durationOption('--timeout <d>', 't')], ['--timeout', '0']).error, "error: option '--timeout <d>' argument '0' is invalid. Must be at least 1ms.");
    assert.equal(parse([countOption('--count <n>', 'c', { max: 10 })], ['--count', '11']).error, "error: option '--count <n>' argument '11' is invalid. Must be at most 10.");
  });

  it('refuse an invalid default when the option is built', () => {
    rejects(() => sizeOption('--size <bytes>', 'size', { default: '64X' }), /^--size: '64X' is not a size/);
    rejects(() => durationOption('--timeout <d>', 't', { default: 'soon' }), /^--timeout: 'soon' is not a duration/);
  });
});
