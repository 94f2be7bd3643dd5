/** Collects what a transport delivers, with promises to await each event. */
import type { FramingError } from '../../src/transport/framer.js';
import type { Message, Transport } from '../../src/transport/transport.js';

/** Everything a started transport has delivered so far. */
export interface Collected {
  messages: Message[];
  streamErrors: FramingError[];
  drains: number;
  /** Resolves with the n-th message (0-based) once it has arrived. */
  message(n: number): Promise<Message>;
  /** Resolves with the close reason once the transport closed. */
  closed: Promise<Error | undefined>;
  /** Resolves with the first stream error. */
  streamError: Promise<FramingError>;
}

/**
 * Starts `transport` with a handler that records every event.
 * @param keepOpenOnStreamError - handle stream errors (leaving the transport open) instead of letting it close itself.
 */
export function collect(transport: Transport, keepOpenOnStreamError = false): Collected {
  const waiters = new Map<number, (m: Message) => void>();
  let onClosed!: (e: Error | undefined) => void;
  let onStreamError!: (e: FramingError) => void;
  const c: Collected = {
    messages: [],
    streamErrors: [],
    drains: 0,
    message(n) {
      const m = c.messages[n];
      if (m) return Promise.resolve(m);
      return new Promise((resolve) => waiters.set(n, resolve));
    },
    closed: new Promise((resolve) => (onClosed = resolve)),
    streamError: new Promise((resolve) => (onStreamError = resolve)),
  };
  transport.start({
    onMessage(m) {
      c.messages.push(m);
      waiters.get(c.messages.length - 1)?.(m);
    },
    onDrain() {
      c.drains++;
    },
    onClose(error) {
      onClosed(error);
    },
    ...(keepOpenOnStreamError
      ? {
          onStreamError(error: FramingError) {
            c.streamErrors.push(error);
            onStreamError(error);
          },
        }
      : {}),
  });
  return c;
}
