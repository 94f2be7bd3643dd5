/**
 * `replay()`: replays a recording's client side against a device and reports
 * every reply that differs (docs/record-replay.md). A first pass over the file
 * finds its sessions, its notes and the data the recorded client answered the
 * device's DMA reads with; then each session is replayed in turn on its own
 * connection (replay-session.ts), reading the file as a stream.
 */
import { InvalidArgumentError } from '../errors.js';
import { getDefaultLogger, type Logger } from '../log.js';
import { Command } from '../protocol/constants.js';
import { isReply } from '../protocol/header.js';
import { decodeDmaReadReply, decodeDmaReadRequest } from '../protocol/dma.js';
import { RecordingFormatError, RecordingReader, type Truncation } from './record-reader.js';
import type { RecordEntry, RecordingHeader } from './record-format.js';
import type { DmaReadSeeds } from './replay-memory.js';
import { replaySession } from './replay-session.js';
import type { ReplayDifference } from './replay-compare.js';

export { DifferenceKind, type ReplayDifference, type FieldDifference } from './replay-compare.js';

/** Options of {@link replay}. */
export interface ReplayOptions {
  /** The device's socket. */
  to: string;
  /** `asap` (default): each command as soon as the recording's order allows; `recorded`: at its recorded time since the session's start. */
  timing?: 'asap' | 'recorded';
  /** How long a reply (or a recorded device request) is awaited, ms (default 10 s). */
  timeoutMs?: number;
  /** Replay only this session (default: every session, in the order they started). */
  session?: number;
  log?: Logger;
  /** Bytes of memory for DMA regions mapped without an fd (default 256 MiB). */
  maxSparseBytes?: number;
  /** Differences listed at most (default 1000); the rest are counted in {@link ReplayReport.omitted}. */
  maxDifferences?: number;
}

/** What a replay found. */
export interface ReplayReport {
  file: string;
  /** The recording's header. */
  header: RecordingHeader;
  /** Sessions replayed. */
  sessions: number;
  /** Client commands replayed (a command that could not be sent is counted, and listed as send-failed). */
  messages: number;
  /** Replies received to them. */
  replies: number;
  /** Every reply or device request that differs, in the order found (at most `maxDifferences`). */
  differences: ReplayDifference[];
  /** Differences found beyond `maxDifferences`, not listed. */
  omitted: number;
  durationMs: number;
  /** Things the reader should know: records the recorder dropped, fds stood in for, a file cut short. */
  notes: string[];
  /** Set when the file ended inside a record (a crash while recording): replayed up to the last whole one. */
  truncated?: Truncation;
}

/** Data the recorded client answered DMA_READs with: at most this much is kept for a replay. */
const MAX_SEED_BYTES = 64 * 1024 * 1024;
/** What one kept answer costs besides its data (so that empty answers are bounded too). */
const SEED_OVERHEAD = 64;
/** Sessions one file may have. */
const MAX_SESSIONS = 1_000_000;
/** Recorded DMA_READ requests awaiting their recorded answer during the survey. */
const MAX_OPEN_READS = 4096;

interface Survey {
  header: RecordingHeader;
  /** Every session in the file, in the order they started. */
  all: number[];
  /** Those to replay. */
  sessions: number[];
  seeds: Map<number, DmaReadSeeds>;
  notes: string[];
  truncated: Truncation | undefined;
}

/**
 * Replays `file` against the device at `options.to`.
 * @throws {RecordingFormatError} EINVAL for a file that is not a recording or has a corrupt record (its index in the message).
 * @throws {InvalidArgumentError} EINVAL for bad options, or ENOENT when `session` is not in the file.
 * @throws {SystemError} ENOENT, ECONNREFUSED, EACCES when the device cannot be connected; the `fs` error when the file cannot be read.
 */
export async function replay(file: string, options: ReplayOptions): Promise<ReplayReport> {
  const timing = options.timing ?? 'asap';
  if (timing !== 'asap' && timing !== 'recorded') throw new InvalidArgumentError(`replay: timing must be asap or recorded, not ${String(timing)}`);
  const timeoutMs = options.timeoutMs ?? 10_000;
  if (!Number.isFinite(timeoutMs) || timeoutMs < 0) throw new InvalidArgumentError(`replay: timeoutMs must be ≥ 0, not ${timeoutMs}`);
  const maxDifferences = options.maxDifferences ?? 1000;
  if (!Number.isSafeInteger(maxDifferences) || maxDifferences < 0) throw new InvalidArgumentError(`replay: maxDifferences must be a non-negative integer, not ${maxDifferences}`);
  const log = (options.log ?? getDefaultLogger()).child({ replay: file });
  const start = performance.now();
  const survey = await surveyRecording(file, options.session);
  if (options.session !== undefined && !survey.sessions.includes(options.session)) {
    throw new InvalidArgumentError(`replay: ${file} has no session ${options.session} (it has ${survey.all.join(', ') || 'none'})`, { errno: 2 });
  }
  const report: ReplayReport = { file, header: survey.header, sessions: 0, messages: 0, replies: 0, differences: [], omitted: 0, durationMs: 0, notes: [...survey.notes] };
  if (survey.truncated) report.truncated = survey.truncated;
  for (const session of survey.sessions) {
    const reader = await RecordingReader.open(file);
    log.info({ session, to: options.to }, 'replay: session');
    const result = await replaySession(only(reader.records(), session), {
      session, to: options.to, timing, timeoutMs, log, seeds: survey.seeds.get(session) ?? new Map(), maxDifferences: maxDifferences - report.differences.length,
      ...(options.maxSparseBytes === undefined ? {} : { maxSparseBytes: options.maxSparseBytes }),
    });
    report.sessions++;
    report.messages += result.messages;
    report.replies += result.replies;
    report.differences.push(...result.differences);
    report.omitted += result.omitted;
    for (const n of result.notes) if (!report.notes.includes(n)) report.notes.push(n);
  }
  report.durationMs = Math.round(performance.now() - start);
  return report;
}

async function* only(records: AsyncGenerator<RecordEntry>, session: number): AsyncGenerator<RecordEntry> {
  for await (const r of records) if (r.session === session) yield r;
}

/** One pass over the file: sessions, notes, DMA_READ answers; the whole file is checked on the way. */
async function surveyRecording(file: string, wanted: number | undefined): Promise<Survey> {
  const reader = await RecordingReader.open(file);
  const survey: Survey = { header: reader.header, all: [], sessions: [], seeds: new Map(), notes: [], truncated: undefined };
  const reads = new Map<string, string>();
  const seen = new Set<number>();
  let seedBytes = 0;
  for await (const r of reader.records()) {
    if (r.type === 'note' && r.session === 0) survey.notes.push(noteText(r.note));
    if (r.type !== 'message' || r.side !== 'client' || r.session === 0) continue;
    if (!seen.has(r.session)) {
      if (seen.size >= MAX_SESSIONS) throw new RecordingFormatError(`more than ${MAX_SESSIONS} sessions`, r.index, r.offset);
      seen.add(r.session);
      survey.all.push(r.session);
    }
    if (wanted !== undefined && r.session !== wanted) continue;
    const key = `${r.session}:${r.channel}:${r.header.msgId}`;
    if (r.direction === 'out' && !isReply(r.header) && r.header.cmd === Command.DMA_READ) {
      if (reads.size >= MAX_OPEN_READS) reads.clear();
      reads.set(key, tryKey(() => decodeDmaReadRequest(r.payload)));
    } else if (r.direction === 'in' && isReply(r.header) && r.header.cmd === Command.DMA_READ && reads.has(key)) {
      const at = reads.get(key)!;
      reads.delete(key);
      const data = tryData(r.payload)?.slice();
      if (at === '' || !data || seedBytes + data.length + SEED_OVERHEAD > MAX_SEED_BYTES) continue;
      seedBytes += data.length + SEED_OVERHEAD;
      let seeds = survey.seeds.get(r.session);
      if (!seeds) survey.seeds.set(r.session, (seeds = new Map()));
      const queue = seeds.get(at) ?? [];
      queue.push(data);
      seeds.set(at, queue);
    }
  }
  survey.sessions = wanted === undefined ? survey.all : survey.all.filter((s) => s === wanted);
  survey.truncated = reader.truncated;
  if (reader.truncated) survey.notes.push(`the file ends inside record ${reader.truncated.record} (byte ${reader.truncated.offset}): replayed up to the last whole record`);
  return survey;
}

function tryKey(decode: () => { addr: bigint; count: bigint }): string {
  try {
    const a = decode();
    return `${a.addr}:${a.count}`;
  } catch {
    return '';
  }
}

function tryData(payload: Uint8Array): Uint8Array | undefined {
  try {
    return decodeDmaReadReply(payload).data;
  } catch {
    return undefined;
  }
}

function noteText(note: Record<string, unknown>): string {
  if (note.kind === 'dropped') return `the recording lost ${String(note.records)} records (${String(note.reason)}): the replay may differ from the session`;
  if (note.kind === 'limit') return `the recording stopped at its size limit (${String(note.maxBytes)} bytes): the rest was not recorded`;
  return `recorder note: ${JSON.stringify(note)}`;
}
