/**
 * PendingRequests: the client's request map. Ids are u16, start at 1, wrap
 * from 0xffff to 0 and skip ids still in flight; a timeout rejects and frees
 * its id; closeAll rejects everything and every later add.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { PendingRequests } from '../../src/client/pending.js';
import { ConnectionClosedError, TimeoutError } from '../../src/errors.js';
import { ReceivedFds } from '../../src/transport/fds.js';
import type { Message } from '../../src/transport/transport.js';

const ETIMEDOUT = 110;
const ENOTCONN = 107;
const EBUSY = 16;
const REGION_READ = 9;
const DEVICE_GET_INFO = 4;

function message(msgId: number, cmd = REGION_READ): Message {
  return { header: { msgId, cmd, msgSize: 16, flags: 1, errorNo: 0 }, payload: new Uint8Array(0), fds: ReceivedFds.EMPTY };
}

/** Adds and immediately settles requests until the next id handed out would be `next`. */
function advanceTo(p: PendingRequests, next: number): void {
  for (;;) {
    const { msgId, reply } = p.add(REGION_READ, 0);
    reply.catch(() => {});
    assert.equal(p.resolve(msgId, message(msgId)), true);
    if (((msgId + 1) & 0xffff) === next) return;
  }
}

describe('PendingRequests', () => {
  it('hands out ids 1, 2, 3, … and resolves each request with its reply', async () => {
    const p = new PendingRequests();
    const a = p.add(DEVICE_GET_INFO, 0);
    const b = p.add(REGION_READ, 0);
    const c = p.add(REGION_READ, 0);
    assert.deepEqual([a.msgId, b.msgId, c.msgId], [1, 2, 3]);
    assert.equal(p.size, 3);
    assert.equal(p.peek(1)?.cmd, DEVICE_GET_INFO);
    assert.equal(typeof p.peek(1)?.sentAt, 'bigint');
    const reply = message(2);
    assert.equal(p.resolve(2, reply), true);
    assert.equal(await b.reply, reply);
    assert.equal(p.size, 2);
    assert.equal(p.peek(2), undefined);
    p.resolve(1, message(1));
    p.resolve(3, message(3));
    await Promise.all([a.reply, c.reply]);
    assert.equal(p.size, 0);
  });

  it('wraps from 0xffff to 0', () => {
    const p = new PendingRequests();
    advanceTo(p, 0xffff);
    const last = p.add(REGION_READ, 0);
    const wrapped = p.add(REGION_READ, 0);
    const after = p.add(REGION_READ, 0);
    assert.deepEqual([last.msgId, wrapped.msgId, after.msgId], [0xffff, 0, 1]);
  });

  it('skips ids still in flight after wrapping', () => {
    const p = new PendingRequests();
    const held = [p.add(REGION_READ, 0), p.add(REGION_READ, 0)]; // ids 1 and 2 stay in flight
    assert.deepEqual(held.map((h) => h.msgId), [1, 2]);
    advanceTo(p, 0);
    assert.equal(p.add(REGION_READ, 0).msgId, 0);
    assert.equal(p.add(REGION_READ, 0).msgId, 3, 'ids 1 and 2 are skipped');
    assert.equal(p.size, 4);
  });

  it('refuses a 65,537th request in flight with EBUSY (every id taken)', () => {
    const p = new PendingRequests();
    for (let i = 0; i < 0x10000; i++) p.add(REGION_READ, 0).reply.catch(() => {});
    assert.equal(p.size, 0x10000);
    assert.throws(
      () => p.add(REGION_READ, 0),
      (e: unknown) => e instanceof ConnectionClosedError && e.errno === EBUSY,
    );
    p.closeAll(new ConnectionClosedError('test over'));
  });

  it('a timeout rejects with TimeoutError ETIMEDOUT and frees the id', async () => {
    const p = new PendingRequests();
    const { msgId, reply } = p.add(DEVICE_GET_INFO, 20);
    await assert.rejects(reply, (e: unknown) => {
      assert.ok(e instanceof TimeoutError);
      assert.equal(e.errno, ETIMEDOUT);
      assert.equal(e.code, 'ETIMEDOUT');
      assert.equal(e.name, 'TimeoutError');
      assert.match(e.message, /DEVICE_GET_INFO/);
      assert.match(e.message, new RegExp(`msg ${msgId}\\b`));
      return true;
    });
    assert.equal(p.size, 0);
    assert.equal(p.peek(msgId), undefined);
    assert.equal(p.resolve(msgId, message(msgId)), false, 'a late reply finds nothing');
    // the id is free: after a full lap it is handed out again, not skipped
    advanceTo(p, msgId);
    assert.equal(p.add(REGION_READ, 0).msgId, msgId);
  });

  it('a reply before the timeout clears the timer (no late rejection)', async () => {
    const p = new PendingRequests();
    const { msgId, reply } = p.add(REGION_READ, 15);
    p.resolve(msgId, message(msgId));
    await reply;
    await new Promise((r) => setTimeout(r, 40));
    assert.equal(p.size, 0);
  });

  it('timeout 0 or Infinity means no timeout', async () => {
    const p = new PendingRequests();
    const a = p.add(REGION_READ, 0);
    const b = p.add(REGION_READ, Infinity);
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(p.size, 2);
    p.resolve(a.msgId, message(a.msgId));
    p.resolve(b.msgId, message(b.msgId));
    await Promise.all([a.reply, b.reply]);
  });

  it('reject() fails one request only', async () => {
    const p = new PendingRequests();
    const a = p.add(REGION_READ, 0);
    const b = p.add(REGION_READ, 0);
    const boom = new Error('send failed');
    p.reject(a.msgId, boom);
    await assert.rejects(a.reply, (e) => e === boom);
    assert.equal(p.size, 1);
    p.reject(0x1234, boom); // unknown id: nothing happens
    p.resolve(b.msgId, message(b.msgId));
    await b.reply;
  });

  it('resolve() of an unknown id returns false', async () => {
    const p = new PendingRequests();
    assert.equal(p.resolve(7, message(7)), false);
    const { msgId, reply } = p.add(REGION_READ, 0);
    assert.equal(p.resolve(msgId, message(msgId)), true);
    assert.equal(p.resolve(msgId, message(msgId)), false, 'a second reply to the same id');
    await reply;
  });

  it('closeAll() rejects everything pending and every later add()', async () => {
    const p = new PendingRequests();
    const entries = [p.add(REGION_READ, 0), p.add(DEVICE_GET_INFO, 1000), p.add(REGION_READ, 5)];
    const error = new ConnectionClosedError('the connection to the server is closed');
    p.closeAll(error);
    assert.equal(p.size, 0);
    for (const e of entries) await assert.rejects(e.reply, (x) => x === error);
    assert.throws(
      () => p.add(REGION_READ, 0),
      (e: unknown) => e === error && (e as ConnectionClosedError).errno === ENOTCONN,
    );
    p.closeAll(new ConnectionClosedError('again')); // idempotent: the first reason stays
    assert.throws(() => p.add(REGION_READ, 0), (e) => e === error);
    assert.equal(p.resolve(entries[0]!.msgId, message(entries[0]!.msgId)), false);
  });
});
