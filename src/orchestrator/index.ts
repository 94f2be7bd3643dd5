/** The live-migration orchestrator: {@link migrate}, its destinations (local, remote over TCP) and the receiver. */
export { migrate, migrateContainer, MigrationCompatibilityError, SWITCHOVER_HEADROOM } from './migrate.js';
export { localDestination, localContainerDestination, containerOfOne, describeSide } from './destination.js';
export { containerSide } from './container-side.js';
export { RemoteDestination, parseChannelAddress } from './remote.js';
export { RemoteContainerDestination } from './remote-container.js';
export { MigrationReceiver } from './receiver.js';
export { MigrationLedger, checkMigrationId, LEDGER_SIZE } from './ledger.js';
export { loadTlsCredentials, isLoopback } from './channel-tls.js';
export type { ChannelTlsCredentials } from './channel-tls.js';
export { MigrationChannelError } from './channel-socket.js';
export { RateLimiter, AutoConverge, throttleDelayMs } from './throttle.js';
export { PROGRESS_INTERVAL_MS } from './progress.js';
export { CHANNEL_VERSION, ChannelFrame, FrameDecoder, FrameEncoder } from './channel.js';
export type { ContainerDestination, DestinationMemory, DeviceChannel, DeviceDescription, DeviceDestination, MigrationDestination } from './destination.js';
export type { ChannelAddress, RemoteDestinationOptions } from './remote.js';
export type { MigrationOffer, PreparedDestination, ReceiveOutcome, ReceivedDevice, ReceiverOptions } from './receiver.js';
export type { RemoteContainerOptions } from './remote-container.js';
export type { AutoConvergeOptions } from './throttle.js';
export type { Frame } from './channel.js';
export type { ChannelPhase, LedgerEntry, LedgerOutcome } from './ledger.js';
export type {
  ArcTiming, ContainerDevice, ContainerMigrationReport, ContainerSide, DeviceMigrationReport, MigrateContainerOptions, MigrateOptions, MigrationBytes, MigrationPhase,
  MigrationReport, MigrationSide, MigrationStep, Progress, StateTiming,
} from './types.js';
