/**
 * VERSION (1), request and reply share one format:
 * `u16 major, u16 minor` then optional UTF-8 JSON ending in a NUL byte.
 */
import { ProtocolError } from '../errors.js';
import { VERSION_SIZE } from './constants.js';
import { formatCapabilitiesJson, parseCapabilitiesJson, type Capabilities } from './capabilities.js';
import { WireReader } from './wire-reader.js';
import { WireWriter } from './wire-writer.js';

/** A VERSION request or reply. */
export interface Version {
  major: number;
  minor: number;
  /**
   * The parsed `capabilities`. Absent when the message carried no JSON or JSON
   * without `capabilities`; when absent, encoding sends no JSON at all.
   */
  capabilities?: Capabilities;
}

const utf8Decoder = new TextDecoder('utf-8', { fatal: true });
const utf8Encoder = new TextEncoder();

/**
 * Encodes a VERSION payload; the JSON (if any) is compact and NUL-terminated.
 * @param padTo - pad the JSON with trailing spaces (still valid JSON) so the
 *   payload is at least this long: a server answers in no more bytes than the
 *   request (QEMU's rule), so a client that wants every capability and
 *   extension in the reply leaves room for it.
 * @throws {InvalidArgumentError} EINVAL if major/minor do not fit a u16 or a capability is invalid.
 */
export function encodeVersion(v: Version, padTo = 0): Uint8Array {
  const json = v.capabilities === undefined ? undefined : utf8Encoder.encode(formatCapabilitiesJson(v.capabilities));
  const jsonSize = json === undefined ? 0 : Math.max(json.length + 1, padTo - VERSION_SIZE);
  const w = new WireWriter(VERSION_SIZE + jsonSize, 'VERSION');
  w.u16(v.major, 'major').u16(v.minor, 'minor');
  if (json !== undefined) w.bytes(json, 'JSON').bytes(SPACES.subarray(0, jsonSize - json.length - 1), 'padding').zeros(1, 'NUL');
  return w.finish();
}

/** Room a client leaves for the server's VERSION reply: more than this library's longest (~330 bytes). */
export const VERSION_REQUEST_PAD = 512;
const SPACES = new Uint8Array(VERSION_REQUEST_PAD).fill(0x20);

/**
 * Decodes a VERSION payload. The JSON must end in NUL (libvfio-user rule); as
 * in libvfio-user the text ends at the first NUL and anything between that and
 * the final NUL is ignored.
 * @throws {ProtocolError} EINVAL if shorter than 4 bytes, the last byte is not NUL,
 * the JSON is empty, not UTF-8 or unparsable, or a capability is badly typed.
 */
export function decodeVersion(payload: Uint8Array): Version {
  const r = new WireReader(payload, 'VERSION');
  const major = r.u16('major');
  const minor = r.u16('minor');
  if (r.remaining === 0) return { major, minor };
  const data = r.rest();
  if (data[data.length - 1] !== 0) throw new ProtocolError('VERSION: JSON is not NUL-terminated');
  const text = decodeText(data.subarray(0, data.indexOf(0)));
  const capabilities = parseCapabilitiesJson(text);
  return capabilities === undefined ? { major, minor } : { major, minor, capabilities };
}

function decodeText(bytes: Uint8Array): string {
  if (bytes.length === 0) throw new ProtocolError('VERSION: empty JSON');
  try {
    return utf8Decoder.decode(bytes);
  } catch (cause) {
    throw new ProtocolError('VERSION: JSON is not valid UTF-8', { cause });
  }
}
