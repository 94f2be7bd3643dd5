/**
 * vfio-user: the public API. Everything a device author, VMM author or tool
 * needs is exported here; `vfio-user/internal` adds the raw native binding and
 * the building blocks tests and the CLI use.
 */
export * from './protocol/index.js';
export {
  VfioUserError,
  ProtocolError,
  RemoteError,
  ConnectionClosedError,
  TimeoutError,
  InvalidArgumentError,
  StateError,
  SystemError,
  ReceivedFds,
  FramingError,
  UnixSocketTransport,
  UnixListener,
  connectUnix,
  createMemoryTransportPair,
  socketPair,
  memfdCreate,
  mapFd,
  unmap,
  createEventFd,
  closeFd,
  peerCredentials,
  VERSION,
};
export type {
  VfioUserErrorOptions,
  FdCloser,
  Message,
  OutgoingHeader,
  PeerCredentials,
  Transport,
  TransportHandler,
  UnixSocketTransportOptions,
  UnixListenOptions,
  ConnectOptions,
  MemoryTransportEnd,
  MemoryTransportOptions,
};

import {
  VfioUserError,
  ProtocolError,
  RemoteError,
  ConnectionClosedError,
  TimeoutError,
  InvalidArgumentError,
  StateError,
  SystemError,
  type VfioUserErrorOptions,
} from './errors.js';
import { ReceivedFds, type FdCloser } from './transport/fds.js';
import { FramingError } from './transport/framer.js';
import type { Message, OutgoingHeader, PeerCredentials, Transport, TransportHandler } from './transport/transport.js';
import { UnixSocketTransport, type UnixSocketTransportOptions } from './transport/unix-socket.js';
import { UnixListener, connectUnix, type UnixListenOptions, type ConnectOptions } from './transport/unix-listener.js';
import { createMemoryTransportPair, type MemoryTransportEnd, type MemoryTransportOptions } from './transport/memory.js';
import { socketPair, memfdCreate, mapFd, unmap, createEventFd, closeFd, peerCredentials } from './native/addon.js';
import { VERSION } from './version.js';
