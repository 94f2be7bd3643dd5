/**
 * The group model alone (no cells): group ids from a type's sharing, viability, one owner across members,
 * release on the owner's last session, hot-add claimed for the owner, a failed member, generations and
 * what is pushed to whom, and the audit lines of each decision.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Errno } from '../../src/protocol/errno.js';
import { GroupRegistry, groupIdOf, type GroupMemberSource } from '../../src/host/groups.js';
import type { GroupMemberState, GroupView, MdevType } from '../../src/host/types.js';
import { recordingLogger } from './host-support.js';

const A = 'aaaaaaaa-0000-4000-8000-000000000001';
const B = 'bbbbbbbb-0000-4000-8000-000000000002';
const C = 'cccccccc-0000-4000-8000-000000000003';
const P1 = { pid: 1001, uid: 500, gid: 500 };
const P2 = { pid: 2002, uid: 501, gid: 501 };

const type = (group?: MdevType['group']): MdevType => ({ name: 'fn', create: () => ({ pci: { vendorId: 1, deviceId: 1, classCode: 0 } }), ...(group === undefined ? {} : { group }) });

function member(uuid: string, state: GroupMemberState = 'active', group = 'card/x'): GroupMemberSource {
  return { uuid, parent: 'card', group, socket: `/run/${uuid}.sock`, state };
}

function registry(): { groups: GroupRegistry; pushed: { uuid: string; view: GroupView }[]; logger: ReturnType<typeof recordingLogger>; audits(name: string): Record<string, unknown>[] } {
  const logger = recordingLogger();
  const pushed: { uuid: string; view: GroupView }[] = [];
  const groups = new GroupRegistry({ logger, push: (uuid, view) => void pushed.push({ uuid, view }) });
  return { groups, pushed, logger, audits: (name) => logger.events.filter((e) => e.event === 'audit' && e.audit === name) };
}

describe('groupIdOf', () => {
  it('names the group from the type’s sharing', () => {
    assert.equal(groupIdOf('card', type(), A, []), `card/${A}`);
    assert.equal(groupIdOf('card', type('instance'), A, []), `card/${A}`);
    assert.equal(groupIdOf('card', type('type'), A, []), 'card/type:fn');
    assert.equal(groupIdOf('card', type('parent'), A, []), 'card/parent');
    assert.equal(groupIdOf('card', type({ attr: 'slot' }), A, [{ slot: '1' }, { other: 'x' }, { slot: '2' }]), 'card/slot=2');
    assert.equal(groupIdOf('card', type({ attr: 'slot' }), A, [{ other: 'x' }]), `card/${A}`);
    assert.equal(groupIdOf('card', undefined, A, []), `card/${A}`);
  });
});

describe('GroupRegistry', () => {
  it('admits the first client as owner, its later sessions to other members, and refuses another pid EBUSY', () => {
    const { groups, audits } = registry();
    groups.update([member(A), member(B)]);
    assert.deepEqual(groups.admit(A, P1), { ok: true });
    assert.deepEqual(groups.viewOf(B)?.owner, P1);
    assert.deepEqual(groups.admit(B, P1), { ok: true });
    const refused = groups.admit(B, P2);
    assert.equal(refused.ok, false);
    assert.equal(!refused.ok && refused.errno, Errno.EBUSY);
    assert.match(!refused.ok ? refused.message : '', /isolation group card\/x is owned by pid 1001 \(uid 500\)/);
    assert.equal(audits('claim').length, 1);
    assert.deepEqual(audits('claim')[0]?.owner, P1);
    assert.equal(audits('refuse').length, 1);
    assert.equal(audits('refuse')[0]?.errno, 'EBUSY');
    assert.deepEqual(audits('refuse')[0]?.client, P2);
  });

  it('refuses EPERM while a member is not active, naming it', () => {
    const { groups, audits } = registry();
    groups.update([member(A), member(B, 'inactive')]);
    const refused = groups.admit(A, P1);
    assert.equal(!refused.ok && refused.errno, Errno.EPERM);
    assert.match(!refused.ok ? refused.message : '', new RegExp(`not viable: member ${B} inactive`));
    assert.equal(groups.viewOf(A)?.viable, false);
    assert.equal(groups.viewOf(A)?.owner, null);
    assert.equal(audits('refuse')[0]?.errno, 'EPERM');
    groups.update([member(A), member(B)]);
    assert.equal(groups.viewOf(A)?.viable, true);
    assert.deepEqual(groups.admit(A, P1), { ok: true });
  });

  it('releases the group when the owner’s last session ends, then lets the next client claim it', () => {
    const { groups, audits } = registry();
    groups.update([member(A), member(B)]);
    groups.admit(A, P1);
    groups.admit(B, P1);
    groups.sessionEnded(A);
    assert.deepEqual(groups.viewOf(A)?.owner, P1, 'one session left: still owned');
    assert.equal(groups.admit(A, P2).ok, false);
    groups.sessionEnded(B);
    assert.equal(groups.viewOf(A)?.owner, null);
    assert.equal(audits('release').length, 1);
    assert.deepEqual(audits('release')[0]?.owner, P1);
    assert.deepEqual(groups.admit(B, P2), { ok: true });
    assert.deepEqual(groups.viewOf(A)?.owner, P2);
  });

  it('counts admitted connections per member (a reconnect admitted before the old session ended keeps the group)', () => {
    const { groups } = registry();
    groups.update([member(A)]);
    groups.admit(A, P1);
    groups.admit(A, P1);
    groups.sessionEnded(A);
    assert.deepEqual(groups.viewOf(A)?.owner, P1);
    groups.sessionEnded(A);
    assert.equal(groups.viewOf(A)?.owner, null);
    groups.sessionEnded(A); // a refused connection's end: nothing to release
    assert.equal(groups.viewOf(A)?.owner, null);
  });

  it('claims a member added to an owned group for the owner, bumps the generation and tells every active member', () => {
    const { groups, pushed, audits } = registry();
    groups.update([member(A)]);
    groups.admit(A, P1);
    const before = groups.viewOf(A)?.generation ?? 0;
    pushed.length = 0;
    groups.update([member(A), member(B, 'inactive')]);
    assert.equal(audits('hot-add-claim').length, 1);
    assert.equal(audits('hot-add-claim')[0]?.uuid, B);
    const view = groups.viewOf(B);
    assert.ok(view && view.generation > before);
    assert.deepEqual(view.members.map((m) => [m.uuid, m.state, m.claimed]), [[A, 'active', true], [B, 'inactive', true]]);
    assert.deepEqual(pushed.map((p) => p.uuid), [A], 'only the active member is pushed the view');
    groups.update([member(A), member(B)]);
    assert.deepEqual(pushed.map((p) => p.uuid).sort(), [A, A, B].sort());
    assert.equal(groups.admit(B, P2).ok, false, 'the hot-added member is held for the owner');
    assert.deepEqual(groups.admit(B, P1), { ok: true });
  });

  it('makes the group non-viable when a member fails, logs it and tells the owner; the failed member’s session is gone', () => {
    const { groups, pushed, audits } = registry();
    groups.update([member(A), member(B)]);
    groups.admit(A, P1);
    groups.admit(B, P1);
    pushed.length = 0;
    groups.update([member(A), member(B, 'failed')]);
    assert.equal(groups.viewOf(A)?.viable, false);
    assert.equal(audits('member-failed').length, 1);
    assert.equal(audits('member-failed')[0]?.uuid, B);
    assert.deepEqual(audits('member-failed')[0]?.owner, P1);
    assert.deepEqual(pushed.map((p) => [p.uuid, p.view.viable]), [[A, false]]);
    groups.sessionEnded(A);
    assert.equal(groups.viewOf(A)?.owner, null, 'the failed member took its session with it');
  });

  it('bumps the generation only when the view changes', () => {
    const { groups } = registry();
    groups.update([member(A)]);
    const g1 = groups.viewOf(A)?.generation ?? -1;
    groups.update([member(A)]);
    assert.equal(groups.viewOf(A)?.generation, g1);
    groups.admit(A, P1);
    const g2 = groups.viewOf(A)?.generation ?? -1;
    assert.ok(g2 > g1);
    groups.admit(A, P1);
    assert.equal(groups.viewOf(A)?.generation, g2);
  });

  it('releases a group whose members all went, and forgets it', () => {
    const { groups, audits } = registry();
    groups.update([member(A), member(C, 'active', 'card/y')]);
    groups.admit(A, P1);
    groups.update([member(C, 'active', 'card/y')]);
    assert.equal(groups.viewOf(A), undefined);
    assert.equal(groups.groupOf(A), undefined);
    assert.deepEqual(groups.views().map((v) => v.group), ['card/y']);
    assert.equal(audits('release').length, 1);
    assert.equal(groups.admit(A, P1).ok, false);
  });

  it('lists views sorted by group, members sorted by UUID', () => {
    const { groups } = registry();
    groups.update([member(C, 'active', 'card/b'), member(B, 'active', 'card/a'), member(A, 'inactive', 'card/b')]);
    const views = groups.views();
    assert.deepEqual(views.map((v) => [v.group, v.parent, v.viable, v.members.map((m) => m.uuid)]), [
      ['card/a', 'card', true, [B]],
      ['card/b', 'card', false, [A, C]],
    ]);
  });
});
