/**
 * What a hostile client can send, and the one outcome each case must have:
 * the stream closed (framing can no longer be trusted), an error reply with a
 * specific errno (the session goes on), or a decoded request with the fds the
 * handler may use. Every fd that arrives is accounted for: used or closed.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Framer } from '../../src/transport/framer.js';
import { checkRequestFds, decodeRequest } from '../../src/protocol/request.js';
import { ProtocolError } from '../../src/errors.js';
import { buildMessage, wb } from '../support/wire-builder.js';

type Outcome = { stream: number } | { errno: number } | { ok: number; useFds: number };

interface Case {
  name: string;
  bytes: Uint8Array;
  fds?: number;
  expect: Outcome;
}

const EINVAL = 22;
const M = (cmd: number, payload: ReturnType<typeof wb> | Uint8Array = new Uint8Array(0), extra: { flags?: number; msgSize?: number } = {}) =>
  buildMessage({ msgId: 0x42, cmd, flags: extra.flags ?? 0, ...(extra.msgSize === undefined ? {} : { msgSize: extra.msgSize }) }, payload);

const version = (json: string, major = 0) => wb().u16(major).u16(2).cstr(json);
const access = (offset: bigint, region: number, count: number) => wb().u64(offset).u32(region).u32(count);
const irqSet = (flags: number, index: number, start: number, count: number) => wb().u32(20).u32(flags).u32(index).u32(start).u32(count);

const CASES: Case[] = [
  // framing: the stream cannot be trusted any more
  { name: 'msg_size 0', bytes: M(9, new Uint8Array(0), { msgSize: 0 }), expect: { stream: EINVAL } },
  { name: 'msg_size 15', bytes: M(9, new Uint8Array(0), { msgSize: 15 }), expect: { stream: EINVAL } },
  { name: 'msg_size 4 GiB - 1', bytes: M(10, new Uint8Array(0), { msgSize: 0xffff_ffff }), expect: { stream: EINVAL } },
  { name: 'msg_size one past the 1 MiB + 32 limit', bytes: M(10, new Uint8Array(0), { msgSize: 1_048_609 }), fds: 2, expect: { stream: EINVAL } },
  // header rules: error reply, session continues
  { name: 'a reply where a command belongs', bytes: M(4, wb().u32(16).zeros(12), { flags: 1 }), expect: { errno: EINVAL } },
  { name: 'type bits 0xf', bytes: M(4, wb().u32(16).zeros(12), { flags: 0xf }), expect: { errno: EINVAL } },
  { name: 'header-only message other than DEVICE_RESET', bytes: M(9), expect: { errno: EINVAL } },
  { name: 'command 0', bytes: M(0, wb().u32(1)), expect: { errno: EINVAL } },
  { name: 'obsolete command 14 (DIRTY_PAGES)', bytes: M(14, wb().u32(1)), expect: { errno: EINVAL } },
  { name: 'command 19', bytes: M(19, wb().u32(1)), expect: { errno: EINVAL } },
  { name: 'command 0xffff', bytes: M(0xffff, wb().u32(1)), expect: { errno: EINVAL } },
  { name: 'DMA_READ sent by a client', bytes: M(11, wb().u64(0).u64(8)), expect: { errno: EINVAL } },
  { name: 'DMA_WRITE sent by a client', bytes: M(12, wb().u64(0).u64(1).u8(1)), expect: { errno: EINVAL } },
  // payloads shorter than their struct
  { name: 'DMA_MAP of 31 bytes', bytes: M(2, wb().zeros(31)), expect: { errno: EINVAL } },
  { name: 'DMA_UNMAP of 23 bytes', bytes: M(3, wb().zeros(23)), expect: { errno: EINVAL } },
  { name: 'GET_INFO of 15 bytes', bytes: M(4, wb().zeros(15)), expect: { errno: EINVAL } },
  { name: 'GET_REGION_INFO of 31 bytes', bytes: M(5, wb().zeros(31)), expect: { errno: EINVAL } },
  { name: 'GET_IRQ_INFO of 1 byte', bytes: M(7, wb().zeros(1)), expect: { errno: EINVAL } },
  { name: 'SET_IRQS of 19 bytes', bytes: M(8, wb().zeros(19)), expect: { errno: EINVAL } },
  { name: 'REGION_READ of 15 bytes', bytes: M(9, wb().zeros(15)), expect: { errno: EINVAL } },
  { name: 'DEVICE_FEATURE of 7 bytes', bytes: M(16, wb().zeros(7)), expect: { errno: EINVAL } },
  { name: 'MIG_DATA_READ of 4 bytes', bytes: M(17, wb().zeros(4)), expect: { errno: EINVAL } },
  // inconsistent sizes and ranges
  { name: 'REGION_WRITE whose count exceeds its data', bytes: M(10, access(0n, 0, 8).u32(1)), expect: { errno: EINVAL } },
  { name: 'REGION_WRITE whose data exceeds its count', bytes: M(10, access(0n, 0, 1).u32(1)), expect: { errno: EINVAL } },
  { name: 'REGION_READ with offset + count wrapping 2^64', bytes: M(9, access(0xffff_ffff_ffff_fff0n, 0, 0x20)), expect: { errno: EINVAL } },
  { name: 'REGION_WRITE with offset + count wrapping 2^64', bytes: M(10, access(0xffff_ffff_ffff_ffffn, 0, 2).u16(0)), expect: { errno: EINVAL } },
  { name: 'SET_IRQS BOOL with fewer bytes than count', bytes: M(8, irqSet(0x22, 2, 0, 4).u8(1)), expect: { errno: EINVAL } },
  { name: 'MIG_DATA_WRITE with size beyond its data', bytes: M(18, wb().u32(16).u32(8).u32(0)), expect: { errno: EINVAL } },
  // VERSION
  { name: 'VERSION with JSON not NUL-terminated', bytes: M(1, wb().u16(0).u16(2).str('{}')), expect: { errno: EINVAL } },
  { name: 'VERSION with unparsable JSON', bytes: M(1, version('{"capabilities":')), expect: { errno: EINVAL } },
  { name: 'VERSION with max_msg_fds of the wrong type', bytes: M(1, version('{"capabilities":{"max_msg_fds":"8"}}')), expect: { errno: EINVAL } },
  { name: 'VERSION with max_msg_fds beyond 1024', bytes: M(1, version('{"capabilities":{"max_msg_fds":1025}}')), expect: { errno: EINVAL } },
  // fds on messages that carry none, and more fds than announced
  { name: 'VERSION carrying an fd', bytes: M(1, version('{}')), fds: 1, expect: { errno: EINVAL } },
  { name: 'SET_IRQS TRIGGER|NONE carrying fds', bytes: M(8, irqSet(0x21, 2, 0, 1)), fds: 1, expect: { errno: EINVAL } },
  { name: 'SET_IRQS EVENTFD with more fds than count', bytes: M(8, irqSet(0x24, 2, 0, 2)), fds: 3, expect: { errno: EINVAL } },
  { name: 'SET_IRQS EVENTFD with fewer fds than count', bytes: M(8, irqSet(0x24, 2, 0, 2)), fds: 1, expect: { errno: EINVAL } },
  // accepted, with the fds the handler may keep (the rest closed)
  { name: 'SET_IRQS EVENTFD with count fds', bytes: M(8, irqSet(0x24, 2, 0, 2)), fds: 2, expect: { ok: 8, useFds: 2 } },
  { name: 'SET_IRQS EVENTFD with no fds (disable)', bytes: M(8, irqSet(0x24, 2, 0, 2)), expect: { ok: 8, useFds: 0 } },
  { name: 'DMA_MAP with two fds uses one', bytes: M(2, wb().u32(32).u32(3).u64(0).u64(0x1000).u64(0x1000)), fds: 2, expect: { ok: 2, useFds: 1 } },
  { name: 'REGION_READ carrying an fd uses none', bytes: M(9, access(0n, 0, 4)), fds: 1, expect: { ok: 9, useFds: 0 } },
  { name: 'DEVICE_RESET with header only', bytes: M(13), expect: { ok: 13, useFds: 0 } },
  { name: 'unknown header flag bits are ignored', bytes: M(4, wb().u32(16).zeros(12), { flags: 0x40_00_00_c0 }), expect: { ok: 4, useFds: 0 } },
  { name: 'REGION_READ ending exactly at 2^64', bytes: M(9, access(0xffff_ffff_ffff_fff0n, 0, 0x10)), expect: { ok: 9, useFds: 0 } },
];

function run(c: Case): { outcome: Outcome; open: Set<number> } {
  const open = new Set<number>();
  const fds = Array.from({ length: c.fds ?? 0 }, (_, i) => 500 + i);
  fds.forEach((fd) => open.add(fd));
  const framer = new Framer({ maxMessageSize: 1_048_608, closeFd: (fd) => open.delete(fd) });
  const { messages, error } = framer.push(c.bytes, fds);
  if (error) return { outcome: { stream: error.errno }, open };
  const message = messages[0];
  assert.ok(message, `${c.name}: framed`);
  try {
    const request = decodeRequest(message.header, message.payload);
    const rule = checkRequestFds(request, message.fds.count);
    for (let i = 0; i < rule.use; i++) open.delete(message.fds.take(i)); // the handler took it (and closes it later)
    return { outcome: { ok: request.cmd, useFds: rule.use }, open };
  } catch (e) {
    assert.ok(e instanceof ProtocolError, `${c.name}: threw ${String(e)}`);
    return { outcome: { errno: e.errno }, open };
  } finally {
    message.fds.closeRemaining();
  }
}

describe('hostile requests', () => {
  for (const c of CASES) {
    it(`${c.name} → ${JSON.stringify(c.expect)}`, () => {
      const { outcome, open } = run(c);
      assert.deepEqual(outcome, c.expect);
      assert.deepEqual([...open], [], 'every fd was taken or closed');
    });
  }
});
