/**
 * The `x-isolation-group` extension, client side (wire format:
 * docs/protocol-extensions.md, codec: src/protocol/isolation-group.ts). A
 * device host puts each instance in an isolation group — the unit a client
 * owns, usable only while every member is active — and advertises the
 * extension in VERSION (`capabilities["x-isolation-group"] = {"feature": N}`).
 * A client reads its group with a DEVICE_FEATURE GET of the advertised index
 * (retrying with the `argsz` the server asks for) and hears of changes through
 * an eventfd it registers with a SET. Servers that do not advertise it (any
 * other vfio-user server) are their own group: {@link readIsolationGroup}
 * answers undefined.
 *
 * A server refuses a client at VERSION when the group is owned by another
 * client (EBUSY) or not viable (EPERM); {@link explainRefusal} turns those
 * errors into messages that say so.
 */
import { ConnectionClosedError, ProtocolError, RemoteError } from '../errors.js';
import type { Logger } from '../log.js';
import { Command, DeviceFeatureFlags } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import { encodeDeviceFeature } from '../protocol/feature.js';
import {
  ISOLATION_GROUP_CAPABILITY,
  ISOLATION_GROUP_HEADER_SIZE,
  ISOLATION_GROUP_MAX_JSON,
  decodeIsolationGroupData,
  isolationGroupFeatureOf,
  type IsolationGroupView,
} from '../protocol/isolation-group.js';
import type { VfioUserClient } from './client.js';
import { SharedEventFd } from './eventfd-watch.js';

/** DEVICE_FEATURE's own `argsz` and `flags`. */
const FEATURE_HEAD = 8;
/** The first GET offers room for this much JSON; a bigger group costs one retry. */
const FIRST_JSON_ROOM = 4096;
/** The largest GET reply accepted. */
const MAX_ARGSZ = FEATURE_HEAD + ISOLATION_GROUP_HEADER_SIZE + ISOLATION_GROUP_MAX_JSON;
/** GETs before giving up on a group that keeps growing between the size answer and the retry. */
const MAX_TRIES = 3;

/** The feature index the server advertised for `x-isolation-group`, or undefined. */
export function isolationGroupFeature(client: VfioUserClient): number | undefined {
  return isolationGroupFeatureOf(client.serverAdvertised?.extra);
}

/**
 * Reads the client's isolation group: DEVICE_FEATURE GET of the advertised
 * index, `argsz` = 8 + the data room offered; when the server answers with
 * only the feature header and a larger `argsz`, asks again with that.
 * @returns the group (its members sorted by UUID, `self` the member this
 *   connection is), or undefined when the server did not advertise the extension.
 * @throws {ProtocolError} EPROTO for a malformed reply or one asking for more than 1 MiB of JSON.
 * @throws {RemoteError} the server's errno (EINVAL when it has no group to report).
 */
export async function readIsolationGroup(client: VfioUserClient): Promise<IsolationGroupView | undefined> {
  const index = isolationGroupFeature(client);
  if (index === undefined) return undefined;
  let argsz = FEATURE_HEAD + ISOLATION_GROUP_HEADER_SIZE + FIRST_JSON_ROOM;
  for (let tries = 0; tries < MAX_TRIES; tries++) {
    const reply = await client.deviceFeature(index | DeviceFeatureFlags.GET, new Uint8Array(0), argsz);
    if (reply.data.length > 0) return decodeView(reply.data);
    if (reply.argsz <= argsz) throw new ProtocolError(`${ISOLATION_GROUP_CAPABILITY}: empty GET reply (argsz ${reply.argsz})`, { errno: Errno.EPROTO });
    if (reply.argsz > MAX_ARGSZ) throw new ProtocolError(`${ISOLATION_GROUP_CAPABILITY}: the server needs argsz ${reply.argsz}, above ${MAX_ARGSZ}`, { errno: Errno.EPROTO });
    argsz = reply.argsz;
  }
  throw new ProtocolError(`${ISOLATION_GROUP_CAPABILITY}: the reply still did not fit after ${MAX_TRIES} GETs`, { errno: Errno.EPROTO });
}

function decodeView(data: Uint8Array): IsolationGroupView {
  try {
    return decodeIsolationGroupData(data);
  } catch (cause) {
    throw new ProtocolError(`malformed ${ISOLATION_GROUP_CAPABILITY} reply: ${(cause as Error).message}`, { errno: Errno.EPROTO, cause });
  }
}

/** Per client: the change eventfd, and the GET answering the latest signal (shared by every listener). */
interface GroupChannel {
  shared: SharedEventFd;
  latest: { total: bigint; view: Promise<IsolationGroupView | undefined> } | undefined;
}

const channels = new WeakMap<VfioUserClient, GroupChannel>();

function setRequest(index: number): Uint8Array {
  return encodeDeviceFeature({ argsz: FEATURE_HEAD, flags: index | DeviceFeatureFlags.SET, data: new Uint8Array(0) });
}

function channelOf(client: VfioUserClient, index: number, logger: Logger): GroupChannel {
  let channel = channels.get(client);
  if (!channel || channel.shared.closed) {
    const shared = new SharedEventFd(client, {
      install: async (fd) => (await client.request(Command.DEVICE_FEATURE, setRequest(index), { fds: [fd] })).fds.closeRemaining(),
      uninstall: async () => (await client.request(Command.DEVICE_FEATURE, setRequest(index))).fds.closeRemaining(),
    }, logger);
    channel = { shared, latest: undefined };
    channels.set(client, channel);
  }
  return channel;
}

/** The view after the latest signal: one GET per signal, whatever the number of listeners. */
function viewAfterSignal(client: VfioUserClient, channel: GroupChannel): Promise<IsolationGroupView | undefined> {
  const total = channel.shared.total;
  if (channel.latest?.total !== total) channel.latest = { total, view: readIsolationGroup(client) };
  return channel.latest.view;
}

/**
 * Calls `listener` with the group as it is after each change the server
 * signals (member added, removed, failed or restarted; viability; owner).
 * The first listener of a client registers an eventfd (DEVICE_FEATURE SET of
 * the advertised index with the fd); later ones share it and its GET. Changes
 * that come faster than they are read arrive as one call with the latest view.
 * A GET that fails is logged (`logger`, warn), as is a listener that throws
 * (error; the others still run); the connection closing ends the watch.
 * @returns a disposer: removes the listener; the last one unregisters (SET
 *   without fd) and closes the eventfd.
 * @throws {ProtocolError} ENOTSUP when the server did not advertise the extension.
 * @throws {RemoteError} the server's errno for the SET (EINVAL).
 * @throws {ConnectionClosedError} ENOTCONN when the connection is closed.
 * @throws {SystemError} EMFILE when no eventfd can be created.
 */
export async function watchIsolationGroup(client: VfioUserClient, listener: (group: IsolationGroupView) => void, logger: Logger): Promise<() => Promise<void>> {
  const index = isolationGroupFeature(client);
  if (index === undefined) throw new ProtocolError(`the server did not advertise ${ISOLATION_GROUP_CAPABILITY}`, { errno: Errno.ENOTSUP });
  const channel = channelOf(client, index, logger);
  let active = true;
  const dispose = await channel.shared.add(() => {
    viewAfterSignal(client, channel).then(
      (view) => {
        if (!active || !view) return;
        try {
          listener(view);
        } catch (err) {
          logger.error({ err }, `${ISOLATION_GROUP_CAPABILITY}: a group change listener failed`);
        }
      },
      (err: unknown) => {
        if (!(err instanceof ConnectionClosedError)) logger.warn({ err }, `${ISOLATION_GROUP_CAPABILITY}: reading the group after a change failed`);
      },
    );
  });
  return async () => {
    active = false;
    await dispose();
  };
}

/**
 * Rewrites a refusal at VERSION into an error that says what it means:
 * EBUSY — the device is in use (another client is connected, or its isolation
 * group is owned by another client); EPERM — this user is not allowed, or
 * the device's isolation group is not viable (a member is not active). The
 * result is still a {@link RemoteError} with the same errno and command (the
 * original as its `cause`); any other error is returned unchanged.
 */
export function explainRefusal(error: unknown, path: string): unknown {
  if (!(error instanceof RemoteError) || error.command !== Command.VERSION) return error;
  const reason =
    error.errno === Errno.EBUSY
      ? 'the device is in use: another client is connected, or its isolation group is owned by another client (EBUSY)'
      : error.errno === Errno.EPERM
        ? 'this user is not allowed, or the device is not viable: a member of its isolation group is not active (EPERM)'
        : undefined;
  if (reason === undefined) return error;
  return new RemoteError(`${path}: refused at VERSION: ${reason}`, error.command, error.errno, { cause: error, ...(error.payload ? { payload: error.payload } : {}) });
}
