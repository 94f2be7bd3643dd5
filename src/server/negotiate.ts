/**
 * VERSION negotiation, the first message of every session: major 0, minor up
 * to 2, the client's capabilities honoured (`max_data_xfer_size` chunks
 * server→client DMA, `max_msg_fds`, `twin_socket`), ours advertised in JSON.
 * The reply is never longer than the request (QEMU reads it into its request's
 * buffer; see version-reply.ts). With a twin socket the reply carries one fd: the client's end of a socket pair
 * on which the server sends its own commands.
 */
import { ProtocolError } from '../errors.js';
import { Command, DEFAULT_PGSIZES, PROTOCOL_MAJOR, PROTOCOL_MINOR } from '../protocol/constants.js';
import { isReply } from '../protocol/header.js';
import { checkRequestFds, decodeRequest } from '../protocol/request.js';
import { resolveCapabilities, type Capabilities, type ExtraMembers, type ResolvedCapabilities } from '../protocol/capabilities.js';
import { migrationExtensionMembers } from '../protocol/migration-extensions.js';
import { CLIENT_MMAPS_CAPABILITY, clientMmapsMember, clientMmapsRequested } from '../protocol/mmap-saving.js';
import { native, socketPair } from '../native/addon.js';
import { UnixSocketTransport } from '../transport/unix-socket.js';
import type { Message, Transport } from '../transport/transport.js';
import type { Logger } from '../log.js';
import type { ServerRequests } from './server-requests.js';
import type { HandlerReply, ServerLimits } from './types.js';
import { fitVersionReply } from './version-reply.js';
import { clientProfile, type ClientProfile, type DmaLayoutOption } from './client-profile.js';

/** The page size of migration dirty tracking we advertise (libvfio-user's). */
const MIGRATION_PGSIZE = 4096;

/** The outcome of a successful negotiation. */
export interface Negotiated {
  client: ResolvedCapabilities;
  /** Where the client departs from the specification (DMA message layout). */
  profile: ClientProfile;
  minor: number;
  reply: HandlerReply;
  /** The server's end of the twin socket, when negotiated. */
  twin: Transport | undefined;
  /** Whether the extension members given to {@link negotiate} were kept in the reply (not dropped to fit it). */
  extensions: boolean;
  /** Whether `x-client-mmaps` (SPARSE_MMAP_SAVING) was asked for and kept in the reply (src/server/mmap-saving.ts). */
  clientMmaps: boolean;
}

/**
 * Answers the first message of a session.
 * @throws {ProtocolError} EINVAL when the message is not VERSION, carries fds,
 *   has major ≠ 0 or malformed capabilities (the session is then closed).
 */
export function negotiate(
  m: Message,
  limits: ServerLimits,
  requests: ServerRequests,
  logger: Logger,
  migratable = false,
  dmaLayout: DmaLayoutOption = 'auto',
  extensions?: ExtraMembers,
): Negotiated {
  if (m.header.cmd !== Command.VERSION) throw new ProtocolError(`the first message must be VERSION, not command ${m.header.cmd}`);
  const request = decodeRequest(m.header, m.payload);
  if (request.cmd !== Command.VERSION) throw new ProtocolError('the first message must be VERSION');
  checkRequestFds(request, m.fds.count);
  const version = request.body;
  if (version.major !== PROTOCOL_MAJOR) throw new ProtocolError(`protocol major ${version.major} is not supported (only ${PROTOCOL_MAJOR})`);
  const client = resolveCapabilities(version.capabilities);
  // libvfio-user: a migratable device needs the client's migration page size, if given, to be ours.
  const clientPgsize = client.migration?.pgsize;
  if (migratable && clientPgsize !== undefined && clientPgsize !== MIGRATION_PGSIZE) {
    throw new ProtocolError(`migration page size ${clientPgsize} is not ${MIGRATION_PGSIZE}`);
  }
  const minor = Math.min(version.minor, PROTOCOL_MINOR);
  const profile = clientProfile(version, dmaLayout);
  const caps: Capabilities = {
    maxMsgFds: limits.maxMsgFds,
    maxDataXferSize: limits.maxDataXferSize,
    maxDmaMaps: limits.maxDmaMaps,
    pgsizes: DEFAULT_PGSIZES,
    // Not even `false` to QEMU (client-profile.ts): the member would only take room in its short reply.
    writeMultiple: profile.writeMultiple ? limits.writeMultiple : undefined,
  };
  // A migratable device advertises this library's extension features (docs/protocol-extensions.md) as extra
  // members of `migration`, but only those the client named in its own `migration`: QEMU warns about unknown
  // members and receives the reply into its request's buffer.
  if (migratable) {
    const asked = version.capabilities?.migration?.extra;
    caps.migration = { pgsize: MIGRATION_PGSIZE, extra: { ...migrationExtensionMembers(asked), ...(clientMmapsRequested(asked) ? clientMmapsMember() : {}) } };
  }
  if (client.twinSocket.supported && client.maxMsgFds > 0) caps.twinSocket = { supported: true, fdIndex: 0 };
  // Top-level extension members (x-isolation-group), after the standard ones; the first given up when the reply must
  // shrink. Not to QEMU, which warns about every member it does not know (client-profile.ts).
  if (extensions !== undefined && profile.extensions) caps.extra = { ...extensions };
  const fitted = fitVersionReply(PROTOCOL_MAJOR, minor, caps, m.payload.length);
  if (fitted.omitted.length > 0) logger.info({ omitted: fitted.omitted }, 'VERSION reply shortened to fit the client\'s request');
  const kept = extensions !== undefined && fitted.capabilities.extra !== undefined;
  const clientMmaps = fitted.capabilities.migration?.extra?.[CLIENT_MMAPS_CAPABILITY] !== undefined;
  if (!fitted.capabilities.twinSocket) return { client, profile, minor, twin: undefined, extensions: kept, clientMmaps, reply: { payload: fitted.payload } };
  const [ours, theirs] = socketPair();
  const twin = openTwin(ours, requests, logger);
  return { client, profile, minor, twin, extensions: kept, clientMmaps, reply: { payload: fitted.payload, fds: [theirs], afterSend: () => native.close(theirs) } };
}

function openTwin(fd: number, requests: ServerRequests, logger: Logger): Transport {
  const twin = new UnixSocketTransport(fd);
  twin.start({
    onMessage(m) {
      if (isReply(m.header)) return requests.settle(m, 'twin socket');
      m.fds.closeRemaining();
      logger.warn({ cmd: m.header.cmd }, 'the client sent a command on the twin socket; ignored');
    },
    onClose(error) {
      if (error) logger.warn({ err: error }, 'twin socket lost');
    },
  });
  requests.useChannel(twin);
  return twin;
}
