/**
 * Whole-message decoding of client→server commands: header rules, command
 * number, payload, and the fd rules of each command — one place that turns any
 * bytes a peer can send into either a typed request or a {@link ProtocolError}
 * carrying the errno for the error reply.
 */
import { ProtocolError } from '../errors.js';
import { Command, HEADER_SIZE, IrqSetFlags, SERVER_MAX_MSG_SIZE, commandName, toCommand } from './constants.js';
import { Errno } from './errno.js';
import { validateCommandHeader, type MessageHeader } from './header.js';
import { decodeVersion, type Version } from './version.js';
import { decodeDmaMapRequest, decodeDmaUnmapRequest, type DmaMapRequest, type DmaUnmapRequest } from './dma.js';
import { decodeDeviceInfo, type DeviceInfo } from './device.js';
import { decodeRegionInfoRequest, type RegionInfoRequest } from './region.js';
import { decodeRegionIoFdsRequest, type RegionIoFdsRequest } from './region-io-fds.js';
import { decodeIrqInfo, decodeIrqSet, type IrqInfo, type IrqSet } from './irq.js';
import {
  decodeRegionReadRequest,
  decodeRegionWriteMulti,
  decodeRegionWriteRequest,
  type RegionAccess,
  type RegionAccessWithData,
  type RegionWriteMulti,
} from './region-access.js';
import { decodeDeviceFeature, type DeviceFeaturePayload } from './feature.js';
import { decodeMigDataReadRequest, decodeMigDataWriteRequest, type MigData, type MigDataReadRequest } from './migration-data.js';

/** The decoded payload of each command a client sends. */
export interface RequestBodies {
  [Command.VERSION]: Version;
  [Command.DMA_MAP]: DmaMapRequest;
  [Command.DMA_UNMAP]: DmaUnmapRequest;
  [Command.DEVICE_GET_INFO]: DeviceInfo;
  [Command.DEVICE_GET_REGION_INFO]: RegionInfoRequest;
  [Command.DEVICE_GET_REGION_IO_FDS]: RegionIoFdsRequest;
  [Command.DEVICE_GET_IRQ_INFO]: IrqInfo;
  [Command.DEVICE_SET_IRQS]: IrqSet;
  [Command.REGION_READ]: RegionAccess;
  [Command.REGION_WRITE]: RegionAccessWithData;
  [Command.DEVICE_RESET]: undefined;
  [Command.REGION_WRITE_MULTI]: RegionWriteMulti;
  [Command.DEVICE_FEATURE]: DeviceFeaturePayload;
  [Command.MIG_DATA_READ]: MigDataReadRequest;
  [Command.MIG_DATA_WRITE]: MigData;
}

/** A command a client can send. */
export type RequestCommand = keyof RequestBodies;

/** One decoded client→server command, discriminated by `cmd`. */
export type DecodedRequest = {
  [C in RequestCommand]: { readonly cmd: C; readonly header: MessageHeader; readonly body: RequestBodies[C] };
}[RequestCommand];

const DECODERS: { [C in RequestCommand]: (payload: Uint8Array) => RequestBodies[C] } = {
  [Command.VERSION]: decodeVersion,
  [Command.DMA_MAP]: decodeDmaMapRequest,
  [Command.DMA_UNMAP]: decodeDmaUnmapRequest,
  [Command.DEVICE_GET_INFO]: decodeDeviceInfo,
  [Command.DEVICE_GET_REGION_INFO]: decodeRegionInfoRequest,
  [Command.DEVICE_GET_REGION_IO_FDS]: decodeRegionIoFdsRequest,
  [Command.DEVICE_GET_IRQ_INFO]: decodeIrqInfo,
  [Command.DEVICE_SET_IRQS]: decodeIrqSet,
  [Command.REGION_READ]: decodeRegionReadRequest,
  [Command.REGION_WRITE]: decodeRegionWriteRequest,
  [Command.DEVICE_RESET]: () => undefined,
  [Command.REGION_WRITE_MULTI]: decodeRegionWriteMulti,
  [Command.DEVICE_FEATURE]: decodeDeviceFeature,
  [Command.MIG_DATA_READ]: decodeMigDataReadRequest,
  [Command.MIG_DATA_WRITE]: decodeMigDataWriteRequest,
};

function isRequestCommand(cmd: number): cmd is RequestCommand {
  return Object.hasOwn(DECODERS, cmd);
}

/**
 * Decodes one client→server message.
 * @param maxMessageSize - the largest `msg_size` accepted (default 1,048,608).
 * @throws {ProtocolError} EINVAL when the header is not a valid command (type
 *   bits, `msg_size` rules), the command is unknown or server→client
 *   (DMA_READ/DMA_WRITE), or the payload does not decode.
 */
export function decodeRequest(header: MessageHeader, payload: Uint8Array, maxMessageSize = SERVER_MAX_MSG_SIZE): DecodedRequest {
  const bad = validateCommandHeader(header, maxMessageSize);
  if (bad) throw bad;
  if (payload.length !== header.msgSize - HEADER_SIZE) {
    throw new ProtocolError(`${commandName(header.cmd)}: ${payload.length} payload bytes but msg_size ${header.msgSize}`);
  }
  const cmd = toCommand(header.cmd);
  if (!isRequestCommand(cmd)) throw new ProtocolError(`${commandName(cmd)} is sent by servers, not clients`);
  const body = (DECODERS[cmd] as (p: Uint8Array) => unknown)(payload);
  return { cmd, header, body } as DecodedRequest;
}

/** How a command treats the fds that came with it. */
export interface FdRule {
  /** Fds the command uses (the rest are closed, not an error). */
  readonly use: number;
}

/**
 * Checks the fds that arrived with a request against the command's rules
 * (libvfio-user's): VERSION carries none; DMA_MAP uses at most one; SET_IRQS
 * carries fds only with DATA_EVENTFD and then exactly `count` of them (or none,
 * to disable); other commands use none (extras are closed, not refused).
 * @returns how many leading fds the handler may take.
 * @throws {ProtocolError} EINVAL when the count breaks a rule.
 */
export function checkRequestFds(request: DecodedRequest, fdCount: number): FdRule {
  switch (request.cmd) {
    case Command.VERSION:
      if (fdCount > 0) throw new ProtocolError(`VERSION must carry no fds (got ${fdCount})`);
      return { use: 0 };
    case Command.DMA_MAP:
      return { use: Math.min(fdCount, 1) };
    case Command.DEVICE_SET_IRQS:
      return checkSetIrqsFds(request.body, fdCount);
    default:
      return { use: 0 };
  }
}

function checkSetIrqsFds(body: IrqSet, fdCount: number): FdRule {
  const eventfds = (body.flags & IrqSetFlags.DATA_EVENTFD) !== 0;
  if (!eventfds && fdCount > 0) {
    throw new ProtocolError(`SET_IRQS without DATA_EVENTFD must carry no fds (got ${fdCount})`, { errno: Errno.EINVAL });
  }
  if (eventfds && fdCount !== 0 && fdCount !== body.count) {
    throw new ProtocolError(`SET_IRQS with DATA_EVENTFD: ${fdCount} fds for count ${body.count}`, { errno: Errno.EINVAL });
  }
  return { use: eventfds ? fdCount : 0 };
}
