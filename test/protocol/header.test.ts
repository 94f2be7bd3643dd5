import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError, ProtocolError } from '../../src/errors.js';
import {
  Command,
  Errno,
  SERVER_MAX_MSG_SIZE,
  decodeHeader,
  decodeMessage,
  encodeErrorReply,
  encodeHeader,
  encodeMessage,
  encodeReply,
  isCommand,
  isError,
  isReply,
  messageType,
  replyErrno,
  unknownFlags,
  validateCommandHeader,
  validateReplyHeader,
  wantsReply,
  type MessageHeader,
} from '../../src/protocol/index.js';
import { buildMessage, wb } from '../support/wire-builder.js';

const isEinval = (e: unknown): boolean => e instanceof ProtocolError && e.errno === Errno.EINVAL;

function hdr(over: Partial<MessageHeader>): MessageHeader {
  return { msgId: 1, cmd: Command.DMA_MAP, msgSize: 48, flags: 0, errorNo: 0, ...over };
}

describe('header encode/decode', () => {
  it('decodes 16 little-endian bytes at an offset, without judging them', () => {
    const bytes = wb().zeros(3).u16(0xfffe).u16(0xabcd).u32(0xffff_fff0).u32(0xffff_ffc3).u32(0xbeef).build();
    assert.deepEqual(decodeHeader(bytes, 3), {
      msgId: 0xfffe, cmd: 0xabcd, msgSize: 0xffff_fff0, flags: 0xffff_ffc3, errorNo: 0xbeef,
    });
  });

  it('throws ProtocolError EINVAL when fewer than 16 bytes are available', () => {
    for (let n = 0; n < 16; n++) assert.throws(() => decodeHeader(new Uint8Array(n)), isEinval);
    assert.throws(() => decodeHeader(new Uint8Array(20), 5), isEinval);
  });

  it('encodes into a target at an offset', () => {
    const target = new Uint8Array(20);
    encodeHeader({ msgId: 7, cmd: 9, msgSize: 32, flags: 0x11, errorNo: 22 }, target, 4);
    assert.deepEqual(target, wb().zeros(4).u16(7).u16(9).u32(32).u32(0x11).u32(22).build());
  });

  it('refuses fields that do not fit and targets that are too short', () => {
    const bad = (e: unknown) => e instanceof InvalidArgumentError;
    assert.throws(() => encodeHeader(hdr({ msgId: 0x10000 }), new Uint8Array(16)), bad);
    assert.throws(() => encodeHeader(hdr({ cmd: -1 }), new Uint8Array(16)), bad);
    assert.throws(() => encodeHeader(hdr({ msgSize: 2 ** 32 }), new Uint8Array(16)), bad);
    assert.throws(() => encodeHeader(hdr({}), new Uint8Array(15)), bad);
    assert.throws(() => encodeHeader(hdr({}), new Uint8Array(16), 1), bad);
  });
});

describe('flag helpers', () => {
  it('type, error, no-reply, unknown bits', () => {
    assert.equal(messageType({ flags: 0x21 }), 1);
    assert.ok(isReply({ flags: 0x21 }) && isError({ flags: 0x21 }) && !isCommand({ flags: 0x21 }));
    assert.ok(isCommand({ flags: 0x10 }) && !wantsReply({ flags: 0x10 }));
    assert.ok(wantsReply({ flags: 0 }));
    assert.equal(unknownFlags({ flags: 0xffff_ffff }), 0xffff_ffc0);
    assert.equal(unknownFlags({ flags: 0x31 }), 0);
    assert.equal(messageType({ flags: 0x1f }), 0xf);
    assert.ok(!isCommand({ flags: 0x2 }) && !isReply({ flags: 0x2 }));
  });

  it('replyErrno clamps like libvfio-user', () => {
    assert.equal(replyErrno({ errorNo: 2 }), 2);
    assert.equal(replyErrno({ errorNo: 4096 }), 4096);
    assert.equal(replyErrno({ errorNo: 0 }), Errno.EINVAL);
    assert.equal(replyErrno({ errorNo: 0xbeef }), Errno.EINVAL);
  });
});

describe('validateCommandHeader (libvfio-user is_valid_header)', () => {
  const cases: Array<[string, Partial<MessageHeader>, boolean]> = [
    ['a normal command', {}, true],
    ['unknown flag bits are ignored', { flags: 0xffff_ff00 }, true],
    ['NO_REPLY', { flags: 0x10 }, true],
    ['ERROR bit on a command is ignored', { flags: 0x20 }, true],
    ['a reply type', { flags: 0x1 }, false],
    ['type 2', { flags: 0x2 }, false],
    ['type 0xf', { flags: 0xf }, false],
    ['msg_size 0', { msgSize: 0 }, false],
    ['msg_size 15', { msgSize: 15 }, false],
    ['msg_size 16 for DMA_MAP', { msgSize: 16 }, false],
    ['msg_size 16 for VERSION', { cmd: Command.VERSION, msgSize: 16 }, false],
    ['msg_size 16 for an unknown command', { cmd: 99, msgSize: 16 }, false],
    ['msg_size 16 for DEVICE_RESET', { cmd: Command.DEVICE_RESET, msgSize: 16 }, true],
    ['msg_size at the maximum', { msgSize: SERVER_MAX_MSG_SIZE }, true],
    ['msg_size one above the maximum', { msgSize: SERVER_MAX_MSG_SIZE + 1 }, false],
    ['msg_size 4 GiB - 1', { msgSize: 0xffff_ffff }, false],
    ['unknown command with a payload (left to toCommand)', { cmd: 99 }, true],
  ];
  for (const [name, over, ok] of cases) {
    it(`${ok ? 'accepts' : 'rejects'} ${name}`, () => {
      const err = validateCommandHeader(hdr(over));
      if (ok) assert.equal(err, undefined);
      else assert.ok(err !== undefined && isEinval(err), String(err));
    });
  }

  it('takes a custom maximum', () => {
    assert.ok(validateCommandHeader(hdr({ msgSize: 100 }), 64));
    assert.equal(validateCommandHeader(hdr({ msgSize: 64 }), 64), undefined);
  });
});

describe('validateReplyHeader', () => {
  const cases: Array<[string, Partial<MessageHeader>, boolean]> = [
    ['a reply', { flags: 1 }, true],
    ['an error reply without payload', { flags: 0x21, msgSize: 16, errorNo: 22 }, true],
    ['any reply may have msg_size 16', { flags: 1, msgSize: 16 }, true],
    ['a command type', { flags: 0 }, false],
    ['type 3', { flags: 3 }, false],
    ['msg_size 8', { flags: 1, msgSize: 8 }, false],
    ['too big', { flags: 1, msgSize: SERVER_MAX_MSG_SIZE + 1 }, false],
  ];
  for (const [name, over, ok] of cases) {
    it(`${ok ? 'accepts' : 'rejects'} ${name}`, () => {
      const err = validateReplyHeader(hdr(over));
      if (ok) assert.equal(err, undefined);
      else assert.ok(err !== undefined && isEinval(err));
    });
  }
});

describe('whole messages', () => {
  it('encodeMessage computes msg_size and defaults flags/errno', () => {
    const m = encodeMessage({ msgId: 3, cmd: Command.DEVICE_RESET });
    assert.deepEqual(m, buildMessage({ msgId: 3, cmd: 13, flags: 0 }));
    const m2 = encodeMessage({ msgId: 4, cmd: 9, flags: 0x10 }, Uint8Array.of(1, 2));
    assert.deepEqual(m2, buildMessage({ msgId: 4, cmd: 9, flags: 0x10 }, Uint8Array.of(1, 2)));
  });

  it('encodeReply / encodeErrorReply echo msg_id and cmd', () => {
    const req = { msgId: 0x1234, cmd: Command.DEVICE_FEATURE };
    assert.deepEqual(encodeReply(req, Uint8Array.of(9)), buildMessage({ msgId: 0x1234, cmd: 16, flags: 1 }, Uint8Array.of(9)));
    assert.deepEqual(encodeErrorReply(req, 22), buildMessage({ msgId: 0x1234, cmd: 16, flags: 0x21, errorNo: 22 }));
    assert.deepEqual(
      encodeErrorReply(req, 22, Uint8Array.of(7)),
      buildMessage({ msgId: 0x1234, cmd: 16, flags: 0x21, errorNo: 22 }, Uint8Array.of(7)),
    );
  });

  it('decodeMessage checks msg_size against the bytes given', () => {
    const m = buildMessage({ msgId: 1, cmd: 9, flags: 0 }, Uint8Array.of(1, 2, 3));
    const { header, payload } = decodeMessage(m);
    assert.equal(header.msgSize, 19);
    assert.deepEqual(payload, Uint8Array.of(1, 2, 3));
    assert.throws(() => decodeMessage(m.subarray(0, 18)), isEinval);
    assert.throws(() => decodeMessage(buildMessage({ msgId: 1, cmd: 9, flags: 0, msgSize: 12 })), isEinval);
  });
});
