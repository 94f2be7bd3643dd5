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
} from './errors.js';
export { ReceivedFds } from './transport/fds.js';
export { FramingError } from './transport/framer.js';
export { UnixSocketTransport } from './transport/unix-socket.js';
export { UnixListener, connectUnix } from './transport/unix-listener.js';
export { createMemoryTransportPair } from './transport/memory.js';
export { socketPair, memfdCreate, mapFd, unmap, createEventFd, closeFd, peerCredentials } from './native/addon.js';
export { VERSION } from './version.js';
export { createDevice, VfioUserDevice } from './device/device.js';
export { ResetReason } from './device/types.js';
export { DmaController } from './device/dma.js';
export { DeviceServer } from './server/server.js';
export { IsolationGroupState } from './server/isolation-group.js';
export { ConfigSpace, formatLspciDump } from './pci/index.js';
export { silentLogger } from './log.js';
export * from './devices/index.js';
export * from './client/index.js';
export * from './orchestrator/index.js';
export { MigrationController } from './migration/controller.js';
export { MigrationFatalError } from './migration/types.js';
export type { MigrationDefinition } from './migration/types.js';
export {
  migrationPath,
  nextHop,
  directArcs,
  stateName,
  StreamReader,
  StreamSource,
  StreamWriter,
  checkCommandAllowed,
  isCommandAllowed,
} from './migration/index.js';
export type { MigrationCapabilities, StreamIdentity, StreamRecord } from './migration/index.js';

export type { VfioUserErrorOptions } from './errors.js';
export type { FdCloser } from './transport/fds.js';
export type { Message, OutgoingHeader, PeerCredentials, Transport, TransportHandler } from './transport/transport.js';
export type { UnixSocketTransportOptions } from './transport/unix-socket.js';
export type { UnixListenOptions, ConnectOptions } from './transport/unix-listener.js';
export type { MemoryTransportEnd, MemoryTransportOptions } from './transport/memory.js';
export type {
  DeviceDefinition,
  PciIdentity,
  RegionDefinition,
  BarDefinition,
  RegionsDefinition,
  RegionCallbacks,
  RegionSpan,
  IrqsDefinition,
  MsixPlacement,
  CapabilitiesDefinition,
  MaybePromise,
} from './device/types.js';
export type { IoEventFdDefinition } from './device/ioeventfds.js';
export type { DmaRegion, DmaSegment, DmaMessageTransport, DmaControllerOptions } from './device/dma.js';
export type { ServeOptions, AdmitVerdict } from './server/server.js';
export type { IsolationGroupSource } from './server/isolation-group.js';
export type { ServerLimits } from './server/types.js';
export type { ConfigSpaceEvent, ConfigSpaceOptions, InterruptMode } from './pci/index.js';
export type { Logger } from './log.js';
export * from './host/index.js';
export * from './mediator/public.js';
export { DEVICE_API, StartMode, InstanceState } from './host/types.js';
