/**
 * The migration plugin's pure parts: the device-state sections (round trip,
 * every malformed input refused), the config-space spans a restore writes
 * (capability walk, order, a looping list), and the spec's validation.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError, ProtocolError } from '../../src/errors.js';
import { writableSpans } from '../../src/mediator/migration/config.js';
import { normalizeSpec } from '../../src/mediator/migration/spec.js';
import { SectionKind, decodeSections, encodeSections, readUint, uintBytes } from '../../src/mediator/migration/state-codec.js';

describe('mediated device state sections', () => {
  it('round-trips and refuses truncated, unknown, reserved and overrunning sections', () => {
    const sections = [
      { kind: SectionKind.MEMORY, index: 2, offset: 0x1000n, data: new Uint8Array([1, 2, 3]) },
      { kind: SectionKind.REGISTER, index: 4, offset: 0n, data: new Uint8Array(0) },
      { kind: SectionKind.RUN, index: 0, offset: 0n, data: uintBytes(0xdeadbeef, 4) },
    ];
    const bytes = encodeSections(sections);
    assert.deepEqual(decodeSections(bytes), sections);
    assert.equal(readUint(decodeSections(bytes)[2]!.data), 0xdeadbeef);
    assert.deepEqual(decodeSections(new Uint8Array(0)), []);
    for (let cut = 1; cut < bytes.length; cut++) {
      const at = [0, 19, 35].includes(cut) ? undefined : cut; // whole sections end at 19 and 35
      if (at !== undefined) assert.throws(() => decodeSections(bytes.subarray(0, cut)), ProtocolError, `cut at ${cut}`);
    }
    const unknown = bytes.slice();
    unknown[0] = 9;
    assert.throws(() => decodeSections(unknown), /unknown section kind 9/);
    const reserved = bytes.slice();
    reserved[1] = 1;
    assert.throws(() => decodeSections(reserved), /reserved byte/);
    const huge = bytes.slice();
    new DataView(huge.buffer).setUint32(4, 0xffff_ffff, true);
    assert.throws(() => decodeSections(huge), /overruns/);
  });
});

describe('config spans a restore writes', () => {
  function config(): Uint8Array {
    const c = new Uint8Array(256);
    c[0x06] = 0x10; // capability list
    c[0x34] = 0x40;
    c.set([0x05, 0x50, 0x80, 0x01], 0x40); // MSI, next 0x50, control 0x0180: 64-bit, per-vector masking
    c.set([0x11, 0x60], 0x50); // MSI-X
    c.set([0x10, 0x00], 0x60); // PCI Express, end of list
    return c;
  }

  it('walks the capabilities: header fields, MSI (address, data, mask, control), MSI-X control, PCIe controls, extra, COMMAND last', () => {
    const spans = writableSpans(config(), [{ offset: 0xa0, size: 4 }]);
    assert.deepEqual(spans, [
      { offset: 0x0c, size: 1 },
      { offset: 0x0d, size: 1 },
      { offset: 0x10, size: 24 },
      { offset: 0x30, size: 4 },
      { offset: 0x3c, size: 1 },
      { offset: 0x44, size: 8 },
      { offset: 0x4c, size: 2 },
      { offset: 0x50, size: 4 },
      { offset: 0x42, size: 2 },
      { offset: 0x52, size: 2 },
      { offset: 0x68, size: 2 },
      { offset: 0x70, size: 2 },
      { offset: 0x88, size: 2 },
      { offset: 0xa0, size: 4 },
      { offset: 0x04, size: 2 },
    ]);
  });

  it('stops at a capability list that loops, and without the list bit walks nothing', () => {
    const looping = config();
    looping[0x61] = 0x40; // PCIe → back to MSI
    assert.equal(writableSpans(looping).length, writableSpans(config()).length);
    const none = config();
    none[0x06] = 0;
    assert.equal(writableSpans(none).length, 6);
  });
});

describe('mediated migration spec', () => {
  it('applies defaults and refuses what is wrong, naming it', () => {
    const n = normalizeSpec({ deviceType: 'd' });
    assert.equal(n.stateVersion, 1);
    assert.equal(n.memory, 'mmappable');
    assert.equal(n.preCopy, true);
    assert.equal(n.p2p, false);
    const bad = (spec: object, re: RegExp): void => assert.throws(() => normalizeSpec(spec as never), (e: unknown) => e instanceof InvalidArgumentError && e.errno === 22 && re.test(e.message));
    bad({ deviceType: '' }, /deviceType/);
    bad({ deviceType: 'd', registers: [{ region: 0, offset: -1, size: 4 }] }, /registers\[0\]: offset/);
    bad({ deviceType: 'd', registers: [{ region: 0, offset: 0, size: 1 << 20 }] }, /registers\[0\]: size/);
    bad({ deviceType: 'd', quiesce: { control: { region: 0, offset: 0, size: 3 }, runMask: 1 } }, /quiesce.control: size 3/);
    bad({ deviceType: 'd', memory: [{ region: 7 }] }, /memory\[0\]: region 7 is not a BAR/);
    bad({ deviceType: 'd', savingMmap: { 2: [{ offset: 0n, size: 0n }] } }, /savingMmap\[2\]\[0\]/);
    bad({ deviceType: 'd', configExtra: [{ offset: 4094, size: 4 }] }, /configExtra\[0\]/);
  });
});
