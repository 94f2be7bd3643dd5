/**
 * What an instance cell's main-thread side (`cell.ts`) and its worker
 * (`cell-worker.ts`) tell each other. Plain structured-clone data.
 */
import type { InstanceClient, MdevAttr } from './types.js';

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
}

/** Main → worker. */
export type CellRequest = { op: 'status'; id: number } | { op: 'stop'; id: number; force: boolean };

/** The answer to a {@link CellRequest}. */
export type CellReply = { ok: true; status?: CellStatus; warning?: string } | { ok: false; errno: number; message: string };

/** Worker → main. */
export type CellToMain =
  | { type: 'loaded' }
  | { type: 'ready' }
  | { type: 'client'; client?: InstanceClient }
  | { type: 'failed'; errno: number; message: string }
  | { type: 'reply'; id: number; reply: CellReply };
