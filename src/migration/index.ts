/**
 * Migration v2: the state machine (kernel next-hop table, paths, arcs, stream
 * effects) and command gating by migration state. Pure functions and tables.
 */
export {
  ALL_MIGRATION_STATES,
  ARC_STREAM_EFFECTS,
  FSM_NEXT_HOP,
  STATE_REQUIRED_FLAGS,
  StreamEffect,
  arcStreamEffect,
  directArcs,
  isMigrationState,
  isRunningState,
  isSavingState,
  isStateSupported,
  isStoppedState,
  migrationFlagsOf,
  migrationPath,
  nextHop,
  stateName,
  supportedStates,
  toMigrationState,
} from './state-machine.js';
export type { MigrationCapabilities, MigrationStateName } from './state-machine.js';
export {
  COMMAND_GATES,
  MIG_DATA_READ_STATES,
  MIG_DATA_WRITE_STATES,
  checkCommandAllowed,
  checkMigDataRead,
  checkMigDataWrite,
  isCommandAllowed,
} from './gating.js';
export type { CommandGate } from './gating.js';
export { StreamWriter, StreamWriterState, StreamSource, encodeStream, decodeStream } from './stream.js';
export { StreamReader } from './stream-reader.js';
export { StreamFlag, RecordTag, STREAM_MAGIC, STREAM_FORMAT_VERSION, MAX_RECORD_PAYLOAD } from './stream-format.js';
export { crc32, crc32Portable } from './crc32.js';
export type { StreamSourceOptions } from './stream.js';
export type { StreamReaderOptions } from './stream-reader.js';
export type { StreamIdentity, StreamRecord, StreamRecordKind, StreamSummary } from './stream-format.js';
