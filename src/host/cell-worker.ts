/**
 * The inside of an instance cell (see `cell.ts`): a worker thread that loads
 * the instance's parent module, builds its device (`buildInstance`: create,
 * then attributes in order, rolled back on failure) and serves it on a dup of
 * the listening socket the host's main thread bound. It beats a shared
 * counter so the main thread's watchdog can tell a stalled event loop, and
 * answers the main thread's `status` and `stop` requests.
 *
 * Nothing here may outlive the thread: every fd it opens goes through the
 * native addon, which closes what the thread still owns when it ends (a
 * terminated worker runs no JS cleanup).
 */
import { isMainThread, parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { Errno } from '../protocol/errno.js';
import { native } from '../native/addon.js';
import { stateName } from '../migration/state-machine.js';
import type { DeviceServer } from '../server/server.js';
import { buildInstance, type BuiltInstance } from './instance-build.js';
import { loadParent } from './parent-loader.js';
import type { CellReply, CellRequest, CellStatus, CellWorkerData, CellToMain } from './cell-protocol.js';

/** The served instance, once ready. */
interface Served {
  built: BuiltInstance;
  server: DeviceServer;
}

/** The errno an error carries (positive), else EINVAL. */
function errnoOf(error: unknown): number {
  const errno = (error as { errno?: unknown } | null)?.errno;
  return typeof errno === 'number' && Number.isInteger(errno) && errno !== 0 && Math.abs(errno) < 4096 ? Math.abs(errno) : Errno.EINVAL;
}

function messageOf(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split('\n')[0] ?? '';
}

/**
 * Beats the shared counter from this thread's event loop (a stalled loop stops beating). The timer also keeps
 * the thread alive while a `create` awaits something that never comes: the main thread's start timeout ends it.
 */
function startHeartbeat(beats: Int32Array, everyMs: number): void {
  const beat = (): void => void Atomics.add(beats, 0, 1);
  beat();
  setInterval(beat, everyMs);
}

/** Builds the device and serves it on a dup of the host's listening fd. */
async function serve(port: MessagePort, data: CellWorkerData): Promise<Served> {
  const { spec } = data;
  const { parent } = await loadParent(spec.parentModule);
  post(port, { type: 'loaded' }); // no module file open any more: the watchdog may now terminate this thread
  const built = await buildInstance(parent, spec.type, { uuid: spec.uuid, parent: spec.parent, type: spec.type, socket: spec.socket }, spec.attrs);
  const fd = native.dup(spec.listenFd); // owned by this thread: closed with the server, or when it ends
  try {
    if (fd < 0) throw Object.assign(new Error(`dup of the listening socket of ${spec.socket} failed`), { errno: -fd });
    const server = built.device.serve({
      path: spec.socket,
      listenFd: fd,
      onClient: (client) => post(port, client ? { type: 'client', client: { pid: client.pid, uid: client.uid, gid: client.gid, since: client.since } } : { type: 'client' }),
      ...(data.allowedUids === undefined ? {} : { allowedUids: data.allowedUids }),
    });
    return { built, server };
  } catch (error) {
    if (fd >= 0) native.close(fd);
    await built.dispose().catch(() => undefined);
    throw error;
  }
}

function status(served: Served): CellStatus {
  const client = served.server.client;
  const migration = served.built.device.migration;
  return {
    ...(client === undefined ? {} : { client: { pid: client.pid, uid: client.uid, gid: client.gid, since: client.since } }),
    ...(migration === undefined ? {} : { migrationState: stateName(migration.state) }),
  };
}

/** Stops serving: EBUSY while a client is connected unless forced; else closes the session (device reset) and disposes. */
async function stop(served: Served, force: boolean): Promise<CellReply> {
  if (!force && served.server.client !== undefined) {
    const { pid, uid } = served.server.client;
    return { ok: false, errno: Errno.EBUSY, message: `instance in use by pid ${pid} (uid ${uid}); stop it with force` };
  }
  await served.server.close();
  try {
    await served.built.dispose();
  } catch (error) {
    return { ok: true, warning: `the parent's dispose failed: ${messageOf(error)}` }; // stopped all the same
  }
  return { ok: true };
}

async function answer(served: Served, request: CellRequest): Promise<CellReply> {
  try {
    return request.op === 'status' ? { ok: true, status: status(served) } : await stop(served, request.force);
  } catch (error) {
    return { ok: false, errno: errnoOf(error), message: messageOf(error) };
  }
}

function post(port: MessagePort, message: CellToMain): void {
  port.postMessage(message);
}

async function main(port: MessagePort, data: CellWorkerData): Promise<void> {
  startHeartbeat(new Int32Array(data.heartbeat), data.heartbeatMs);
  let served: Served;
  try {
    served = await serve(port, data);
  } catch (error) {
    return post(port, { type: 'failed', errno: errnoOf(error), message: messageOf(error) });
  }
  // One stop at a time (status is answered meanwhile); once stopped, the main thread ends this thread.
  let stopping = false;
  port.on('message', (request: CellRequest) => {
    if (request.op === 'stop') {
      if (stopping) return post(port, { type: 'reply', id: request.id, reply: { ok: false, errno: Errno.EBUSY, message: 'instance is already stopping' } });
      stopping = true;
    }
    void answer(served, request).then((reply) => {
      if (request.op === 'stop' && !reply.ok) stopping = false;
      post(port, { type: 'reply', id: request.id, reply });
    });
  });
  post(port, { type: 'ready' });
}

if (!isMainThread && parentPort) void main(parentPort, workerData as CellWorkerData);
