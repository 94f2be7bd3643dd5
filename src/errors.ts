/**
 * The error hierarchy of vfio-user. One class per *kind* of failure; the message
 * names the *site*. Every class may carry a Linux `errno` (the value that goes,
 * or came, over the wire) and accepts `ErrorOptions` so `cause` chains work.
 */
import { Errno, errnoName } from './protocol/errno.js';

/** Options accepted by every vfio-user error. */
export interface VfioUserErrorOptions extends ErrorOptions {
  /** Linux errno describing the failure, if there is one. */
  errno?: number;
}

/** Base class of every error thrown by this package. */
export class VfioUserError extends Error {
  /** Linux errno describing the failure, if any. */
  readonly errno: number | undefined;
  /** Symbolic name of {@link errno} (`'EINVAL'`), if known. */
  readonly code: string | undefined;

  constructor(message: string, options: VfioUserErrorOptions = {}) {
    super(message, options);
    this.name = 'VfioUserError';
    this.errno = options.errno;
    this.code = options.errno === undefined ? undefined : errnoName(options.errno);
  }
}

/**
 * Bytes that do not form a valid message: a short or inconsistent payload, an
 * unknown command, a field out of range. Always carries an errno (default
 * `EINVAL`), which is what a server puts in its error reply.
 */
export class ProtocolError extends VfioUserError {
  declare readonly errno: number;
  constructor(message: string, options: VfioUserErrorOptions = {}) {
    super(message, { ...options, errno: options.errno ?? Errno.EINVAL });
    this.name = 'ProtocolError';
  }
}

/** The peer answered a request with an ERROR reply. */
export class RemoteError extends VfioUserError {
  declare readonly errno: number;
  /** Command number of the failed request. */
  readonly command: number;
  /** The error reply's payload, when it carried one (a failed DEVICE_FEATURE echoes its request). */
  readonly payload: Uint8Array | undefined;
  constructor(message: string, command: number, errno: number, options: ErrorOptions & { payload?: Uint8Array } = {}) {
    super(message, { ...options, errno });
    this.name = 'RemoteError';
    this.command = command;
    this.payload = options.payload && options.payload.length > 0 ? options.payload : undefined;
  }
}

/** The connection is gone (EOF, reset, or torn down after a stream error). */
export class ConnectionClosedError extends VfioUserError {
  constructor(message: string, options: VfioUserErrorOptions = {}) {
    super(message, { ...options, errno: options.errno ?? Errno.ENOTCONN });
    this.name = 'ConnectionClosedError';
  }
}

/** An operation did not complete in time. */
export class TimeoutError extends VfioUserError {
  constructor(message: string, options: VfioUserErrorOptions = {}) {
    super(message, { ...options, errno: options.errno ?? Errno.ETIMEDOUT });
    this.name = 'TimeoutError';
  }
}

/** A caller of this library passed an argument it cannot accept. */
export class InvalidArgumentError extends VfioUserError {
  constructor(message: string, options: VfioUserErrorOptions = {}) {
    super(message, { ...options, errno: options.errno ?? Errno.EINVAL });
    this.name = 'InvalidArgumentError';
  }
}

/** An operation is not allowed in the object's current state. */
export class StateError extends VfioUserError {
  constructor(message: string, options: VfioUserErrorOptions = {}) {
    super(message, { ...options, errno: options.errno ?? Errno.EINVAL });
    this.name = 'StateError';
  }
}

/** A system call made through the native addon failed. */
export class SystemError extends VfioUserError {
  declare readonly errno: number;
  /** The failing system call, e.g. `'sendmsg'`. */
  readonly syscall: string;
  constructor(syscall: string, errno: number, detail = '', options: ErrorOptions = {}) {
    super(`${syscall}${detail ? ` (${detail})` : ''}: ${errnoName(errno) ?? 'errno'} ${errno}`, {
      ...options,
      errno,
    });
    this.name = 'SystemError';
    this.syscall = syscall;
  }
}
