/**
 * Payloads that are empty by definition: the DEVICE_RESET request, and the
 * replies to DMA_MAP, DEVICE_SET_IRQS, DEVICE_RESET and MIG_DATA_WRITE.
 */

const EMPTY = new Uint8Array(0);

/** Encodes an empty payload (a shared zero-length array). */
export function encodeEmpty(): Uint8Array {
  return EMPTY;
}

/**
 * Decodes a payload that carries nothing. Extra bytes are ignored, as
 * libvfio-user ignores them; nothing can be truncated.
 * @returns `undefined`.
 */
export function decodeEmpty(_payload: Uint8Array): undefined {
  return undefined;
}
