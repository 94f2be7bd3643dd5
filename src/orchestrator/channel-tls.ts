/**
 * TLS for the migration channel, with mutual authentication by X.509
 * certificates, laid out as QEMU's `tls-creds-x509` directory:
 * `ca-cert.pem` (the CA both sides trust), `server-cert.pem` /
 * `server-key.pem` (the receiver), `client-cert.pem` / `client-key.pem`
 * (the sender). The receiver demands a client certificate signed by the CA;
 * the sender checks the receiver's certificate against the CA and the host
 * name or IP it connects to. TLS 1.3 only.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { connect as connectTls, type ConnectionOptions, type TLSSocket, type TlsOptions } from 'node:tls';
import { InvalidArgumentError, VfioUserError } from '../errors.js';
import { Errno } from '../protocol/errno.js';

/** One side's credentials (PEM). */
export interface ChannelTlsCredentials {
  /** The CA certificate(s) the peer's certificate must chain to. */
  ca: Buffer;
  /** This side's certificate. */
  cert: Buffer;
  /** This side's private key. */
  key: Buffer;
}

/**
 * Reads a QEMU `tls-creds-x509` directory for `side`.
 * @throws {InvalidArgumentError} EINVAL naming the file that is missing or unreadable.
 */
export function loadTlsCredentials(dir: string, side: 'server' | 'client'): ChannelTlsCredentials {
  const read = (name: string): Buffer => {
    try {
      return readFileSync(join(dir, name));
    } catch (cause) {
      throw new InvalidArgumentError(`TLS credentials: cannot read ${join(dir, name)}: ${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message}`);
    }
  };
  return { ca: read('ca-cert.pem'), cert: read(`${side}-cert.pem`), key: read(`${side}-key.pem`) };
}

/** Whether `host` is a loopback address or `localhost` (where a plaintext channel stays on the machine). */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  if (h === 'localhost' || h === '::1') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  return /^::ffff:127\./.test(h);
}

/** The receiver's `tls.createServer` options: mutual authentication, TLS 1.3. */
export function serverTlsOptions(creds: ChannelTlsCredentials): TlsOptions {
  return { ca: creds.ca, cert: creds.cert, key: creds.key, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' };
}

/**
 * Connects to a receiver over TLS and completes the handshake (its certificate checked against the CA and `host`).
 * @throws {VfioUserError} ETIMEDOUT; ECONNREFUSED / ECONNRESET; EACCES when a certificate is refused (either way).
 */
export async function connectTlsSocket(host: string, port: number, creds: ChannelTlsCredentials, timeoutMs: number, url: string): Promise<TLSSocket> {
  const options: ConnectionOptions = { host, port, ca: creds.ca, cert: creds.cert, key: creds.key, minVersion: 'TLSv1.3', ...(isIP(host) ? {} : { servername: host }) };
  const socket = connectTls(options);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new VfioUserError(`connect ${url}: TLS handshake timed out after ${timeoutMs} ms`, { errno: Errno.ETIMEDOUT }));
    }, timeoutMs);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      socket.destroy();
      const code = error.code ?? '';
      const errno = code === 'ECONNREFUSED' ? Errno.ECONNREFUSED : code === 'ECONNRESET' ? Errno.ECONNRESET : /CERT|SSL|TLS|ALERT/i.test(code + error.message) ? Errno.EACCES : Errno.EIO;
      reject(new VfioUserError(`connect ${url}: ${code || 'TLS'}: ${error.message}`, { errno, cause: error }));
    });
  });
  return socket;
}
