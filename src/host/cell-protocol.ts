/**
 * What an instance cell's main-thread side (`cell.ts`) and its worker
 * (`cell-worker.ts`) tell each other. Plain structured-clone data.
 */
import type { IsolationGroupView } from '../protocol/isolation-group.js';
import type { AdmitVerdict } from '../server/server.js';
import type { InstanceClient, MdevAttr } from './types.js';

export type { AdmitVerdict } from '../server/server.js';

/** What a cell serves: one instance of one parent's type, on a socket the host's main thread bound. */
export interface CellSpec {
  /** The instance's UUID (lower-case). */
  uuid: string;
  /** The parent's name. */
  parent: string;
  /** URL of the parent's module (`LoadedParent.moduleUrl`), imported by the worker. */
  parentModule: string;
  /** The type's short name (without `<parent>-`). */
  type: string;
  /** Attributes, applied in order after create. */
  attrs: MdevAttr[];
  /** The socket path (for the device and logs; the main thread owns the file). */
  socket: string;
  /**
   * The listening socket bound to `socket` ({@link bindInstanceSocket}); it must stay
   * open while the cell runs. The worker serves on its own dup of it.
   */
  listenFd: number;
  /**
   * The instance's isolation group when the cell starts: its clients are told with the `x-isolation-group`
   * extension (updated with `InstanceCell.setGroup`). Without it the extension is offered once a group is set.
   */
  group?: IsolationGroupView;
}

/** An instance's live state, as its worker reports it. */
export interface CellStatus {
  /** The connected client (SO_PEERCRED) and when its session started. */
  client?: InstanceClient;
  /** The device's migration state name (`RUNNING`, `STOP_COPY`, …) when it supports migration. */
  migrationState?: string;
}

/** What the worker receives as `workerData`. */
export interface CellWorkerData {
  spec: CellSpec;
  /** One Int32 the worker increments every `heartbeatMs` from its event loop. */
  heartbeat: SharedArrayBuffer;
  heartbeatMs: number;
  /** Only peers with one of these uids are served (SO_PEERCRED). */
  allowedUids?: number[];
  /** How long the worker waits for the main thread's admission verdict before refusing the client with EAGAIN. */
  admitTimeoutMs: number;
}

/** The peer credentials an admission is asked for. */
export interface CellPeer {
  pid: number;
  uid: number;
  gid: number;
}

/** What a cell's stop did about a connected client. */
export type CellRelease = 'idle' | 'released' | 'forced';

/** The outcome of a stop. */
export interface CellStopOutcome {
  /** `idle`: no client; `released`: the client left after release requests; `forced`: its session was closed. */
  release: CellRelease;
  /** Release requests made (REQ eventfd signals attempted). */
  requests: number;
  /**
   * Whether a request reached the client (false: it registered no REQ eventfd, so it could not be asked).
   * Always set by `InstanceCell.stop`; optional for outcomes built elsewhere.
   */
  delivered?: boolean;
  /** How long the stop waited for the client to leave (ms). */
  waitedMs: number;
}

/** A stop request: `force` closes the session at once; else release requests every `intervalMs` for up to `timeoutMs`, then force. */
export interface CellStopRequest {
  op: 'stop';
  id: number;
  force: boolean;
  /** How long a connected client is given to leave (default 10 000 ms). */
  timeoutMs?: number;
  /** Time between release requests (default max(100, timeoutMs / 10) ms). */
  intervalMs?: number;
}

/** Main → worker. The `admit-verdict` answers a worker's `admit` (no reply); the others are answered with a `reply`. */
export type CellRequest =
  | { op: 'status'; id: number }
  | CellStopRequest
  | { op: 'group'; id: number; group: IsolationGroupView }
  | { op: 'admit-verdict'; id: number; verdict: AdmitVerdict };

/** The answer to a {@link CellRequest}. */
export type CellReply = ({ ok: true; status?: CellStatus; warning?: string } & Partial<CellStopOutcome>) | { ok: false; errno: number; message: string };

/** Worker → main. */
export type CellToMain =
  | { type: 'loaded' }
  | { type: 'ready' }
  | { type: 'client'; client?: InstanceClient }
  /** A client connected: may it have a session? (answered with an `admit-verdict` of the same id) */
  | { type: 'admit'; id: number; client: CellPeer }
  /** The worker stopped waiting for that verdict (timeout, stop): an `ok` verdict for it started no session. */
  | { type: 'admit-cancel'; id: number }
  /** A stop asked the client to release the device (the `count`th time); `delivered`: a REQ eventfd was signalled. */
  | { type: 'release-requested'; count: number; delivered: boolean }
  | { type: 'failed'; errno: number; message: string }
  | { type: 'reply'; id: number; reply: CellReply };
