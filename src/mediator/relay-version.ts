/**
 * The VERSION exchange as the mediator sees it: the JSON of both sides parsed
 * leniently (for plugins; the bytes themselves pass through untouched), and
 * where the upstream's reply grants a twin socket.
 */
import { VERSION_SIZE } from '../protocol/constants.js';

const decoder = new TextDecoder('utf-8', { fatal: false });

/** The JSON object of a VERSION payload (`{}` when it has none or it does not parse). */
export function versionJson(payload: Uint8Array): Record<string, unknown> {
  if (payload.length <= VERSION_SIZE) return {};
  const body = payload.subarray(VERSION_SIZE);
  const end = body.indexOf(0);
  try {
    const value: unknown = JSON.parse(decoder.decode(end < 0 ? body : body.subarray(0, end)));
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

/**
 * The fd index of the twin socket a VERSION reply grants, or undefined when
 * it grants none (`capabilities.twin_socket.supported` true; `fd_index`
 * defaults to 0, as our client and libvfio-user's read it).
 */
export function grantedTwinIndex(reply: Record<string, unknown>): number | undefined {
  const caps = reply.capabilities;
  if (typeof caps !== 'object' || caps === null) return undefined;
  const twin = (caps as Record<string, unknown>).twin_socket;
  if (typeof twin !== 'object' || twin === null) return undefined;
  const t = twin as Record<string, unknown>;
  if (t.supported !== true) return undefined;
  const index = t.fd_index ?? 0;
  return typeof index === 'number' && Number.isInteger(index) && index >= 0 && index < 253 ? index : undefined;
}
