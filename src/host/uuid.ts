/**
 * Instance UUIDs, read the way mdevctl reads them. mdevctl parses `-u` with
 * the Rust `uuid` crate's `parse_str`, which takes hex digits in any case and
 * four spellings: hyphenated (`976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9`), simple
 * (32 hex digits), braced (`{…hyphenated…}`) and URN (`urn:uuid:…hyphenated…`).
 * It always prints, and names definition files with, the lower-case
 * hyphenated form, which {@link normalizeUuid} returns. Any version and
 * variant is accepted (mdev does not care), the nil UUID included.
 */
import { randomUUID } from 'node:crypto';
import { InvalidArgumentError } from '../errors.js';

const CANONICAL = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const HYPHENATED = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const SIMPLE = /^[0-9a-f]{32}$/i;

/** The hyphenated part of an accepted spelling, or undefined. */
function hyphenatedOf(text: string): string | undefined {
  if (HYPHENATED.test(text)) return text;
  if (SIMPLE.test(text)) {
    return `${text.slice(0, 8)}-${text.slice(8, 12)}-${text.slice(12, 16)}-${text.slice(16, 20)}-${text.slice(20)}`;
  }
  if (text.startsWith('{') && text.endsWith('}') && HYPHENATED.test(text.slice(1, -1))) return text.slice(1, -1);
  if (text.startsWith('urn:uuid:') && HYPHENATED.test(text.slice(9))) return text.slice(9);
  return undefined;
}

/**
 * Whether `text` is a UUID in any spelling mdevctl's `-u` accepts (see the
 * module comment). Never throws.
 */
export function isUuid(text: string): boolean {
  return typeof text === 'string' && hyphenatedOf(text) !== undefined;
}

/**
 * Whether `text` is already in the form definition files and sockets are named
 * with: lower-case, hyphenated (8-4-4-4-12). Never throws.
 */
export function isCanonicalUuid(text: string): boolean {
  return typeof text === 'string' && CANONICAL.test(text);
}

/**
 * The lower-case hyphenated form of a UUID given in any spelling mdevctl
 * accepts: `976D8CC2…`, `{…}`, `urn:uuid:…` and 32 bare hex digits all give
 * `976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9`.
 *
 * @throws {InvalidArgumentError} EINVAL: `text` is not a UUID (the message quotes it).
 */
export function normalizeUuid(text: string): string {
  const hyphenated = typeof text === 'string' ? hyphenatedOf(text) : undefined;
  if (hyphenated === undefined) {
    throw new InvalidArgumentError(`invalid UUID '${String(text)}': expected 8-4-4-4-12 hex digits`);
  }
  return hyphenated.toLowerCase();
}

/** A new random (version 4) UUID, lower-case hyphenated, as `define`/`start` generate without `-u`. Never throws. */
export function newUuid(): string {
  return randomUUID();
}
