/**
 * Everything the package exports from the mediator (docs/mediation.md): the
 * core relay, the typed plugin API and upstream helpers, fault injection and
 * record/replay. Assembled here so `src/index.ts` re-exports one module.
 */
export * from './index.js';
export * from './typed.js';
export * from './upstream-ops.js';
export * from './fault.js';
export { createRecorder, type Recorder, type RecorderOptions, type RecorderStats } from './record.js';
export { replay, DifferenceKind, type ReplayOptions, type ReplayReport, type ReplayDifference, type FieldDifference } from './replay.js';
export { RecordingReader, RecordingFormatError, type Truncation } from './record-reader.js';
export { RECORD_FORMAT_VERSION, type RecordEntry, type RecordingHeader, type MessageRecord, type FdMeta, type FdKind } from './record-format.js';
export * from './migration/index.js';
