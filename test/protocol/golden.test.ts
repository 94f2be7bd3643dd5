/**
 * Tier (a): golden bytes built by the independent WireBuilder. Every golden
 * decodes to its expected value, and (unless decode-only) encodes back to
 * exactly the same bytes, header included.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  Command,
  decodeHeader,
  decodeMessage,
  encodeMessage,
  isReply,
  validateCommandHeader,
  validateReplyHeader,
} from '../../src/protocol/index.js';
import { GOLDENS } from '../support/golden.js';

describe('golden messages', () => {
  it('have unique names', () => {
    assert.equal(new Set(GOLDENS.map((g) => g.name)).size, GOLDENS.length);
  });

  it('cover request and reply of every command 1–18 except the obsolete 14', () => {
    for (const cmd of Object.values(Command)) {
      if (cmd === Command.DIRTY_PAGES) continue;
      for (const direction of ['request', 'reply'] as const) {
        assert.ok(GOLDENS.some((g) => g.cmd === cmd && g.direction === direction), `${cmd} ${direction}`);
      }
    }
  });

  for (const g of GOLDENS) {
    describe(g.name, () => {
      it('has the expected header and passes header validation', () => {
        assert.deepEqual(decodeHeader(g.bytes), g.header);
        const err = g.direction === 'request' ? validateCommandHeader(g.header) : validateReplyHeader(g.header);
        assert.equal(err, undefined);
        assert.equal(isReply(g.header), g.direction === 'reply');
      });

      it('decodes to the expected value', () => {
        const { payload } = decodeMessage(g.bytes);
        assert.deepStrictEqual(g.decode(payload), g.value);
      });

      it('decodes the same from an unaligned copy (byteOffset respected)', () => {
        const shifted = new Uint8Array(g.bytes.length + 3);
        shifted.set(g.bytes, 3);
        const { payload } = decodeMessage(shifted.subarray(3));
        assert.deepStrictEqual(g.decode(payload), g.value);
      });

      if (g.encode) {
        const encode = g.encode;
        it('encodes back to exactly the same bytes', () => {
          const payload = encode(g.value);
          const message = encodeMessage(
            { msgId: g.header.msgId, cmd: g.header.cmd, flags: g.header.flags, errorNo: g.header.errorNo },
            payload,
          );
          assert.deepStrictEqual(message, g.bytes);
        });
      }
    });
  }
});
