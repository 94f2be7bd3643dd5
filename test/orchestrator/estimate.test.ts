/** The switch-over projection ({@link estimateSwitchover}) on fed measurements. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MEMORY_MARGIN, estimateSwitchover, type SwitchoverInputs } from '../../src/orchestrator/estimate.js';

const base: SwitchoverInputs = {
  dirtyPagesPerMs: 0,
  saturated: false,
  sinceCollectMs: 10,
  totalPages: 16_384,
  pageCopyMs: 0.002,
  lastCollect: { ms: 0.5, pages: 0 },
  deviceBytes: 4096n,
  deviceBytesPerMs: 4096,
  sourceArcsMs: 0.5,
  destinationArcsMs: 0.25,
  requestMs: 0.1,
  requests: 6,
};

describe('estimateSwitchover', () => {
  it('counts the fixed costs with nothing dirty: collection, device stream, arcs, round trips', () => {
    const e = estimateSwitchover(base);
    assert.equal(e.pages, 0);
    assert.equal(e.copyMs, 0);
    assert.equal(e.collectMs, MEMORY_MARGIN * 0.5);
    assert.equal(e.deviceMs, 1);
    assert.equal(e.arcsMs, 0.75);
    assert.ok(Math.abs(e.requestsMs - 0.6) < 1e-9);
    assert.ok(Math.abs(e.totalMs - (MEMORY_MARGIN * 0.5 + 1 + 0.75 + 0.6)) < 1e-9);
  });

  it('projects the pages dirtied from the last collection until the source stops (not the last round)', () => {
    // 100 pages/ms for 10 ms since the collection + the 0.5 ms stop arc + one round trip.
    const e = estimateSwitchover({ ...base, dirtyPagesPerMs: 100, lastCollect: { ms: 0.5, pages: 500 } });
    assert.equal(e.pages, 1060);
    assert.ok(Math.abs(e.copyMs - MEMORY_MARGIN * 1060 * 0.002) < 1e-9);
    // The collection scales up with the page count (the report over the whole range is the floor).
    assert.ok(Math.abs(e.collectMs - MEMORY_MARGIN * 0.5 * (1060 / 500)) < 1e-9);
  });

  it('keeps the last collection time as the floor when fewer pages are expected', () => {
    const e = estimateSwitchover({ ...base, dirtyPagesPerMs: 10, lastCollect: { ms: 2, pages: 5000 } });
    assert.equal(e.pages, 106);
    assert.equal(e.collectMs, MEMORY_MARGIN * 2);
  });

  it('caps the pages at the guest size, and takes all of them when the rate saturated the memory', () => {
    assert.equal(estimateSwitchover({ ...base, dirtyPagesPerMs: 1e6 }).pages, 16_384);
    assert.equal(estimateSwitchover({ ...base, dirtyPagesPerMs: 1, saturated: true }).pages, 16_384);
  });

  it('grows with the time since the collection (the device keeps dirtying)', () => {
    const soon = estimateSwitchover({ ...base, dirtyPagesPerMs: 300, sinceCollectMs: 5 });
    const late = estimateSwitchover({ ...base, dirtyPagesPerMs: 300, sinceCollectMs: 20 });
    assert.ok(late.totalMs > soon.totalMs);
    assert.ok(late.pages > soon.pages);
  });

  it('never converges on unmeasurable device data', () => {
    assert.equal(estimateSwitchover({ ...base, deviceBytesPerMs: 0 }).totalMs, Number.POSITIVE_INFINITY);
  });
});
