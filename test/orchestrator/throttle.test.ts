/** The pre-copy throttles: {@link RateLimiter}, {@link AutoConverge}, {@link throttleDelayMs}. */
import { prngUnit } from '../support/prng.js';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError } from '../../src/errors.js';
import { Errno } from '../../src/protocol/errno.js';
import {
  AutoConverge,
  RATE_LIMIT_BURST_MS,
  RateLimiter,
  throttleDelayMs,
  type AutoConvergeOptions,
  type ThrottleClock,
} from '../../src/orchestrator/throttle.js';

const MB = 1_000_000;

/** A clock whose sleep advances time by exactly the requested amount. */
class FakeClock implements ThrottleClock {
  t = 1000;
  readonly sleeps: number[] = [];
  nowCalls = 0;
  now(): number {
    this.nowCalls += 1;
    return this.t;
  }
  async sleep(ms: number): Promise<void> {
    this.sleeps.push(ms);
    this.t += ms;
  }
}


function isEinval(err: unknown): boolean {
  assert.ok(err instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${String(err)}`);
  assert.equal(err.errno, Errno.EINVAL);
  assert.equal(err.code, 'EINVAL');
  return true;
}

describe('RateLimiter', () => {
  it('sleeps 100 ms for 10 MB at 100 MB/s', async () => {
    const clock = new FakeClock();
    const limiter = new RateLimiter(100 * MB, clock);
    assert.equal(limiter.limited, true);
    assert.equal(limiter.bytesPerSecond, 100 * MB);
    await limiter.consume(10 * MB);
    assert.ok(Math.abs(limiter.sleptMs - 100) <= 1, `slept ${limiter.sleptMs} ms`);
    assert.equal(clock.sleeps.length, 1);
    assert.equal(limiter.bytes, 10 * MB);
  });

  it('paces chunk by chunk: 10 × 1 MB at 100 MB/s sleeps 10 ms each, 100 ms in all', async () => {
    const clock = new FakeClock();
    const limiter = new RateLimiter(100 * MB, clock);
    for (let i = 0; i < 10; i++) await limiter.consume(MB);
    assert.deepEqual(clock.sleeps.map((ms) => Math.round(ms * 1000) / 1000), Array(10).fill(10));
    assert.ok(Math.abs(limiter.sleptMs - 100) <= 1e-6);
  });

  it('counts transfer time already spent: no sleep when the chunks took longer than the cap allows', async () => {
    const clock = new FakeClock();
    const limiter = new RateLimiter(100 * MB, clock);
    await limiter.consume(MB); // window starts here: 10 ms due
    assert.equal(limiter.sleptMs, 10);
    clock.t += 50; // the next chunk took 50 ms to move: slower than the cap
    await limiter.consume(MB);
    assert.equal(limiter.sleptMs, 10);
    clock.t += 4; // 1 MB in 4 ms: faster than the cap, so the rest of its 10 ms is slept
    await limiter.consume(MB);
    assert.equal(limiter.sleptMs, 16);
    clock.t += 30; // idle: 10 ms of credit at most
    await limiter.consume(MB / 2); // 5 ms worth, covered by the credit
    assert.equal(limiter.sleptMs, 16);
    await limiter.consume(MB); // 5 ms of credit left, 10 ms due
    assert.equal(limiter.sleptMs, 21);
  });

  it('bounds the idle credit to the burst allowance', async () => {
    const clock = new FakeClock();
    const limiter = new RateLimiter(100 * MB, clock);
    await limiter.consume(0);
    clock.t += 60_000; // a long idle stretch earns only RATE_LIMIT_BURST_MS of credit
    await limiter.consume(10 * MB); // 100 ms worth
    assert.ok(Math.abs(limiter.sleptMs - (100 - RATE_LIMIT_BURST_MS)) <= 1e-6, `slept ${limiter.sleptMs} ms`);
  });

  it('never lets the average since the window start exceed the cap over random chunks', async () => {
    for (const seed of [1, 2, 3, 42, 1234]) {
      const random = prngUnit(seed);
      const clock = new FakeClock();
      const cap = 50 * MB;
      const limiter = new RateLimiter(cap, clock);
      let start: number | undefined;
      let total = 0;
      for (let i = 0; i < 500; i++) {
        const bytes = Math.floor(random() * 2 * MB);
        if (random() < 0.3) clock.t += random() * 80; // transfer time / idle gaps
        start ??= clock.t;
        await limiter.consume(bytes);
        total += bytes;
        const elapsed = clock.t - start;
        assert.ok(total <= (cap * elapsed) / 1000 + 1e-3, `seed ${seed} chunk ${i}: ${total} B in ${elapsed} ms`);
      }
      assert.ok(limiter.sleptMs > 0);
      assert.equal(limiter.bytes, total);
    }
  });

  for (const cap of [undefined, Infinity]) {
    it(`never sleeps nor reads the clock when unlimited (${String(cap)})`, async () => {
      const clock = new FakeClock();
      const limiter = new RateLimiter(cap, clock);
      assert.equal(limiter.limited, false);
      assert.equal(limiter.bytesPerSecond, Infinity);
      for (let i = 0; i < 100; i++) await limiter.consume(1 << 30);
      assert.equal(limiter.sleptMs, 0);
      assert.deepEqual(clock.sleeps, []);
      assert.equal(clock.nowCalls, 0);
      assert.equal(limiter.bytes, 100 * (1 << 30));
    });
  }

  for (const cap of [0, -1, -Infinity, Number.NaN]) {
    it(`rejects the cap ${String(cap)} with EINVAL`, () => {
      assert.throws(() => new RateLimiter(cap), isEinval);
    });
  }

  it('rejects a negative or non-finite byte count with EINVAL', async () => {
    const limiter = new RateLimiter(MB, new FakeClock());
    await assert.rejects(limiter.consume(-1), isEinval);
    await assert.rejects(limiter.consume(Number.NaN), isEinval);
    await assert.rejects(limiter.consume(Infinity), isEinval);
  });

  it('accepts bigint byte counts', async () => {
    const clock = new FakeClock();
    const limiter = new RateLimiter(100 * MB, clock);
    await limiter.consume(5n * BigInt(MB));
    assert.equal(limiter.sleptMs, 50);
  });

  it('really waits with the default clock', async () => {
    const limiter = new RateLimiter(50 * MB);
    const t0 = performance.now();
    await limiter.consume(MB); // 20 ms at 50 MB/s
    const elapsed = performance.now() - t0;
    assert.ok(elapsed >= 19, `elapsed ${elapsed} ms`);
    assert.ok(limiter.sleptMs >= 19 && limiter.sleptMs <= elapsed + 1e-6, `slept ${limiter.sleptMs} ms`);
  });
});

const HIGH = [60, 100] as const; // dirtied 60% of transferred
const LOW = [50, 100] as const; // exactly the threshold: not high

describe('AutoConverge', () => {
  it('starts unthrottled and stays so while dirtied ≤ 50% of transferred', () => {
    const ac = new AutoConverge();
    assert.equal(ac.percent, 0);
    for (let i = 0; i < 20; i++) assert.equal(ac.observe(...LOW), 0);
    assert.equal(ac.observe(0, 0), 0);
    assert.equal(ac.observe(0, 0), 0);
    assert.equal(ac.changes, 0);
  });

  it('triggers on the second high iteration in a row at 20%', () => {
    const ac = new AutoConverge();
    assert.equal(ac.observe(...HIGH), 0);
    assert.equal(ac.highCount, 1);
    assert.equal(ac.observe(...HIGH), 20);
    assert.equal(ac.percent, 20);
    assert.equal(ac.changes, 1);
    assert.equal(ac.highCount, 0);
  });

  it('steps up by 10 every two high iterations, capped at 99', () => {
    const ac = new AutoConverge();
    const seen: number[] = [];
    for (let i = 0; i < 24; i++) seen.push(ac.observe(...HIGH));
    assert.deepEqual(seen, [0, 20, 20, 30, 30, 40, 40, 50, 50, 60, 60, 70, 70, 80, 80, 90, 90, 99, 99, 99, 99, 99, 99, 99]);
    assert.equal(ac.changes, 9);
  });

  it('a low iteration resets the count of high ones', () => {
    const ac = new AutoConverge();
    assert.equal(ac.observe(...HIGH), 0);
    assert.equal(ac.observe(...LOW), 0);
    assert.equal(ac.observe(...HIGH), 0);
    assert.equal(ac.observe(...HIGH), 20);
    assert.equal(ac.observe(...HIGH), 20);
    assert.equal(ac.observe(...LOW), 20); // a low iteration never lowers the throttle
    assert.equal(ac.observe(...HIGH), 20);
    assert.equal(ac.observe(...HIGH), 30);
    assert.equal(ac.changes, 2);
  });

  it("counts high iterations since the last trigger with consecutive: false (QEMU's ram.c)", () => {
    const ac = new AutoConverge({ consecutive: false });
    assert.equal(ac.observe(...HIGH), 0);
    assert.equal(ac.observe(...LOW), 0);
    assert.equal(ac.observe(...HIGH), 20);
  });

  it('treats dirtying with nothing transferred as high', () => {
    const ac = new AutoConverge();
    ac.observe(1, 0);
    assert.equal(ac.observe(1n, 0n), 20);
  });

  it('honours custom options', () => {
    const ac = new AutoConverge({ initialPercent: 50, incrementPercent: 25, maxPercent: 80, triggerRatio: 0.25 });
    const seen: number[] = [];
    for (let i = 0; i < 8; i++) seen.push(ac.observe(30, 100));
    assert.deepEqual(seen, [0, 50, 50, 75, 75, 80, 80, 80]);
    assert.equal(ac.changes, 3);
    const strict = new AutoConverge({ triggerRatio: 1 });
    for (let i = 0; i < 4; i++) assert.equal(strict.observe(100, 100), 0);
    strict.observe(101, 100);
    assert.equal(strict.observe(101, 100), 20);
    const flat = new AutoConverge({ initialPercent: 99, maxPercent: 99 });
    for (let i = 0; i < 6; i++) flat.observe(...HIGH);
    assert.equal(flat.percent, 99);
    assert.equal(flat.changes, 1);
  });

  const bad: AutoConvergeOptions[] = [
    { initialPercent: 0 },
    { initialPercent: 100 },
    { initialPercent: 1.5 },
    { incrementPercent: 0 },
    { incrementPercent: -10 },
    { maxPercent: 100 },
    { maxPercent: 0 },
    { initialPercent: 60, maxPercent: 50 },
    { triggerRatio: 0 },
    { triggerRatio: 1.5 },
    { triggerRatio: Number.NaN },
    { maxPercent: Number.NaN },
  ];
  for (const options of bad) {
    it(`rejects ${JSON.stringify(options, (_k, v: unknown) => (Number.isNaN(v) ? 'NaN' : v))} with EINVAL`, () => {
      assert.throws(() => new AutoConverge(options), isEinval);
    });
  }

  it('rejects negative or non-finite byte counts with EINVAL', () => {
    const ac = new AutoConverge();
    assert.throws(() => ac.observe(-1, 100), isEinval);
    assert.throws(() => ac.observe(1, Number.NaN), isEinval);
    assert.throws(() => ac.observe(Infinity, 1), isEinval);
    assert.equal(ac.highCount, 0);
  });
});

describe('throttleDelayMs', () => {
  it('pauses percent / (100 − percent) × the work time', () => {
    assert.equal(throttleDelayMs(20, 80), 20);
    assert.equal(throttleDelayMs(50, 10), 10);
    assert.equal(throttleDelayMs(75, 4), 12);
    assert.equal(throttleDelayMs(90, 1), 9);
    assert.ok(Math.abs(throttleDelayMs(30, 7) - 3) < 1e-12);
  });

  it('is 0 without a throttle or without work', () => {
    assert.equal(throttleDelayMs(0, 10), 0);
    assert.equal(throttleDelayMs(-5, 10), 0);
    assert.equal(throttleDelayMs(30, 0), 0);
  });

  it('clamps percents at 99', () => {
    assert.equal(throttleDelayMs(99, 1), 99);
    assert.equal(throttleDelayMs(100, 1), 99);
    assert.equal(throttleDelayMs(150, 2), 198);
    assert.equal(throttleDelayMs(Infinity, 1), 99);
  });

  it('rejects NaN and negative or non-finite work with EINVAL', () => {
    assert.throws(() => throttleDelayMs(Number.NaN, 1), isEinval);
    assert.throws(() => throttleDelayMs(20, -1), isEinval);
    assert.throws(() => throttleDelayMs(20, Infinity), isEinval);
  });
});
