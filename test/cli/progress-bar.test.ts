/**
 * The CLI's migration progress bar (src/cli/progress-bar.ts): the fields it
 * draws from the orchestrator's progress events, and that it stays silent off a TTY.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { barFields, createProgressBar } from '../../src/cli/progress-bar.js';
import type { Progress } from '../../src/orchestrator/types.js';

const MB = 1e6;

function progress(over: Partial<Progress>): Progress {
  return {
    phase: 'precopy', step: 'full-copy', iteration: 0, remainingBytes: 0n, memoryBandwidth: 1, deviceBandwidth: 1, projectedDowntimeMs: Number.POSITIVE_INFINITY, elapsedMs: 10,
    bytes: { precopyMemory: 0n, precopyDevice: 0n, stopCopyMemory: 0n, stopCopyDevice: 0n }, zeroBytes: 0n, bytesPerSecond: 0, dirtyPages: 0, stepBytes: 0, stepTotalBytes: 0,
    stoppedMs: 0, budgetMs: 300, timeLimitMs: 60_000, ...over,
  };
}

describe('migration progress bar', () => {
  it('during the full copy: moved of the guest size, the rate', () => {
    const f = barFields(progress({ bytes: { precopyMemory: 40n * 1_000_000n, precopyDevice: 0n, stopCopyMemory: 0n, stopCopyDevice: 0n }, stepBytes: 40 * MB, stepTotalBytes: 100 * MB, bytesPerSecond: 812.4 * MB }), 100 * MB);
    assert.deepEqual(f, { label: 'precopy/full-copy', moved: 40 * MB, total: 100 * MB, rate: '812.4 MB/s', detail: 'dirty 0 pages' });
  });

  it('later rounds: moved plus what the projection says is left; stopped time while the source is stopped; done: total = moved', () => {
    const bytes = { precopyMemory: 120n * 1_000_000n, precopyDevice: 1_000_000n, stopCopyMemory: 0n, stopCopyDevice: 0n };
    assert.equal(barFields(progress({ step: 'estimate', iteration: 2, bytes, remainingBytes: 5_000_000n, dirtyPages: 1220 }), 100 * MB).total, 126 * MB);
    assert.equal(barFields(progress({ step: 'estimate', iteration: 2, bytes, dirtyPages: 1220 }), 100 * MB).detail, 'dirty 1220 pages');
    assert.equal(barFields(progress({ phase: 'switchover', step: 'stop-copy', bytes, stoppedMs: 12.34 }), 100 * MB).detail, 'stopped 12.3/300 ms');
    const done = barFields(progress({ phase: 'done', step: 'done', bytes, remainingBytes: 5_000_000n }), 100 * MB);
    assert.equal(done.total, done.moved);
  });

  it('draws nothing when the stream is not a TTY', () => {
    const written: string[] = [];
    const stream = { isTTY: false, write: (s: string) => written.push(s) } as unknown as NodeJS.WriteStream;
    const bar = createProgressBar({ memoryBytes: MB, stream });
    assert.equal(bar.onProgress, undefined);
    bar.stop();
    assert.deepEqual(written, []);
  });
});
