/**
 * The inside of an instance cell (see `cell.ts`): a worker thread that loads
 * the instance's parent module, builds its device (`buildInstance`: create,
 * then attributes in order, rolled back on failure) and serves it on a dup of
 * the listening socket the host's main thread bound. It beats a shared
 * counter so the main thread's watchdog can tell a stalled event loop, and
 * answers the main thread's `status`, `group` and `stop` requests. Each client
 * is admitted by the main thread (`admit` → `admit-verdict`: isolation groups
 * are decided there); a stop with a client connected asks it to release the
 * device (REQ eventfd), again and again, then forces it.
 *
 * Nothing here may outlive the thread: every fd it opens goes through the
 * native addon, which closes what the thread still owns when it ends (a
 * terminated worker runs no JS cleanup).
 */
import { isMainThread, parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { Errno } from '../protocol/errno.js';
import { native } from '../native/addon.js';
import { stateName } from '../migration/state-machine.js';
import type { IsolationGroupView } from '../protocol/isolation-group.js';
import { IsolationGroupState } from '../server/isolation-group.js';
import type { AdmitVerdict, DeviceServer } from '../server/server.js';
import type { PeerCredentials } from '../transport/transport.js';
import { buildInstance, type BuiltInstance } from './instance-build.js';
import { loadParent } from './parent-loader.js';
import type { CellReply, CellRequest, CellStatus, CellStopOutcome, CellStopRequest, CellWorkerData, CellToMain } from './cell-protocol.js';

/** The served instance, once ready. */
interface Served {
  built: BuiltInstance;
  server: DeviceServer;
}

/** Default {@link CellStopRequest.timeoutMs}. */
const DEFAULT_RELEASE_TIMEOUT_MS = 10_000;

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

/** Admission round trips to the main thread: `admit` out, `admit-verdict` back, `admit-cancel` when the server gave up. */
class Admissions {
  readonly #port: MessagePort;
  readonly #waiting = new Map<number, (verdict: AdmitVerdict) => void>();
  #next = 1;

  constructor(port: MessagePort) {
    this.#port = port;
  }

  /** Asks the main thread; `signal` aborted (timeout, stop) → tells it the verdict will not be used. */
  ask(client: PeerCredentials, signal: AbortSignal): Promise<AdmitVerdict> {
    const id = this.#next++;
    return new Promise<AdmitVerdict>((resolve) => {
      this.#waiting.set(id, resolve);
      signal.addEventListener(
        'abort',
        () => {
          this.#waiting.delete(id);
          post(this.#port, { type: 'admit-cancel', id });
          resolve({ ok: false, errno: Errno.EAGAIN, message: 'admission abandoned' }); // not used by the server
        },
        { once: true },
      );
      post(this.#port, { type: 'admit', id, client: { pid: client.pid, uid: client.uid, gid: client.gid } });
    });
  }

  settle(id: number, verdict: AdmitVerdict): void {
    const resolve = this.#waiting.get(id);
    this.#waiting.delete(id);
    resolve?.(verdict);
  }
}

/** The group as this instance's clients see it: the main thread's view, `self` naming this instance. */
function ownView(view: IsolationGroupView, uuid: string): IsolationGroupView {
  return { ...view, self: uuid };
}

/** Builds the device and serves it on a dup of the host's listening fd. */
async function serve(port: MessagePort, data: CellWorkerData, admissions: Admissions, group: IsolationGroupState): Promise<Served> {
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
      admit: (client, signal) => admissions.ask(client, signal),
      admitTimeoutMs: data.admitTimeoutMs,
      isolationGroup: group,
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

/** A release wait in progress can be cut short by a forced stop. */
interface ReleaseWait {
  /** Resolves when the wait is cut short. */
  readonly cut: Promise<'cut'>;
  /** Cuts it short (idempotent). */
  force(): void;
}

function releaseWait(): ReleaseWait {
  let force!: () => void;
  const cut = new Promise<'cut'>((resolve) => (force = () => resolve('cut')));
  return { cut, force };
}

/** Whether the server's session ends (and its cleanup is done) within `ms`, or the wait was cut short. */
async function endsWithin(served: Served, ms: number, wait: ReleaseWait): Promise<'ended' | 'waiting' | 'cut'> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<'waiting'>((resolve) => (timer = setTimeout(() => resolve('waiting'), Math.max(0, ms))));
  try {
    return await Promise.race([served.server.idle().then(() => 'ended' as const), expired, wait.cut]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Asks the connected client to release the device (REQ eventfd, count 1, 2, 3 … reported to the main thread)
 * every `intervalMs` until it leaves or `timeoutMs` passed. No new client is accepted meanwhile.
 */
async function requestRelease(
  port: MessagePort,
  served: Served,
  request: CellStopRequest,
  wait: ReleaseWait,
): Promise<{ released: boolean; requests: number; delivered: boolean; waitedMs: number }> {
  const timeoutMs = request.timeoutMs ?? DEFAULT_RELEASE_TIMEOUT_MS;
  const intervalMs = request.intervalMs ?? Math.max(100, Math.floor(timeoutMs / 10));
  served.server.stopListening();
  const started = Date.now();
  const deadline = started + timeoutMs;
  let requests = 0;
  let reached = false;
  for (;;) {
    requests++;
    const delivered = served.built.device.requestRelease();
    reached ||= delivered;
    post(port, { type: 'release-requested', count: requests, delivered });
    const now = await endsWithin(served, Math.min(intervalMs, deadline - Date.now()), wait);
    if (now === 'ended') return { released: true, requests, delivered: reached, waitedMs: Date.now() - started };
    if (now === 'cut' || Date.now() >= deadline) return { released: false, requests, delivered: reached, waitedMs: Date.now() - started };
  }
}

/**
 * Stops serving: with no client, or `force`, at once; else release requests until the client leaves or the
 * timeout, then forced (session closed: DMA dropped, device reset). Then the instance is disposed.
 */
async function stop(port: MessagePort, served: Served, request: CellStopRequest, wait: ReleaseWait): Promise<CellReply> {
  let outcome: CellStopOutcome = { release: 'idle', requests: 0, delivered: false, waitedMs: 0 };
  if (served.server.client !== undefined) {
    if (request.force) outcome.release = 'forced';
    else {
      const asked = await requestRelease(port, served, request, wait);
      outcome = { release: asked.released ? 'released' : 'forced', requests: asked.requests, delivered: asked.delivered, waitedMs: asked.waitedMs };
    }
  }
  await served.server.close();
  try {
    await served.built.dispose();
  } catch (error) {
    return { ok: true, ...outcome, warning: `the parent's dispose failed: ${messageOf(error)}` }; // stopped all the same
  }
  return { ok: true, ...outcome };
}

async function answer(port: MessagePort, served: Served, group: IsolationGroupState, uuid: string, request: CellRequest, wait: ReleaseWait): Promise<CellReply> {
  try {
    if (request.op === 'status') return { ok: true, status: status(served) };
    if (request.op === 'group') {
      group.set(ownView(request.group, uuid)); // the sessions signal their eventfds if the generation moved
      return { ok: true };
    }
    if (request.op === 'stop') return await stop(port, served, request, wait);
    return { ok: false, errno: Errno.EINVAL, message: `unknown request ${String(request.op)}` };
  } catch (error) {
    return { ok: false, errno: errnoOf(error), message: messageOf(error) };
  }
}

function post(port: MessagePort, message: CellToMain): void {
  port.postMessage(message);
}

async function main(port: MessagePort, data: CellWorkerData): Promise<void> {
  startHeartbeat(new Int32Array(data.heartbeat), data.heartbeatMs);
  const admissions = new Admissions(port);
  let served: Served | undefined;
  let group: IsolationGroupState;
  let stopping: ReleaseWait | undefined;
  // Verdicts may come before the device is served; requests come only once it is ('ready').
  port.on('message', (request: CellRequest) => {
    if (request.op === 'admit-verdict') return admissions.settle(request.id, request.verdict);
    if (!served) return post(port, { type: 'reply', id: request.id, reply: { ok: false, errno: Errno.ENODEV, message: 'instance not served yet' } });
    // One stop at a time (status and group are answered meanwhile; a forced stop cuts a release wait short, the
    // stop in progress then answers for both); once stopped, the main thread ends this thread.
    if (request.op === 'stop') {
      if (stopping && request.force) {
        stopping.force();
        return post(port, { type: 'reply', id: request.id, reply: { ok: true } });
      }
      if (stopping) return post(port, { type: 'reply', id: request.id, reply: { ok: false, errno: Errno.EBUSY, message: 'instance is already stopping' } });
      stopping = releaseWait();
    }
    void answer(port, served, group, data.spec.uuid, request, stopping ?? releaseWait()).then((reply) => {
      if (request.op === 'stop' && !reply.ok) stopping = undefined;
      post(port, { type: 'reply', id: request.id, reply });
    });
  });
  try {
    group = new IsolationGroupState(data.spec.group && ownView(data.spec.group, data.spec.uuid));
    served = await serve(port, data, admissions, group);
  } catch (error) {
    return post(port, { type: 'failed', errno: errnoOf(error), message: messageOf(error) });
  }
  post(port, { type: 'ready' });
}

if (!isMainThread && parentPort) void main(parentPort, workerData as CellWorkerData);
