/**
 * Test credentials for the TLS measurements of the orchestrator section: a
 * CA and a receiver (SAN 127.0.0.1) and sender certificate signed by it, in
 * QEMU's tls-creds-x509 layout, made with the `openssl` CLI (absent: the TLS
 * rows are skipped, with the reason).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Makes the credentials in `dir`; @returns `dir`, or the reason they could not be made. */
export function makeTlsCredentials(dir: string): { dir: string } | { skipped: string } {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
  } catch {
    return { skipped: 'the openssl CLI is not installed' };
  }
  mkdirSync(dir, { recursive: true });
  const ssl = (...args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  ssl('req', '-x509', ...ec, '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem', '-days', '1', '-subj', '/CN=bench CA');
  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  writeFileSync(join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
  for (const side of ['server', 'client']) {
    ssl('req', ...ec, '-keyout', `${side}-key.pem`, '-out', `${side}.csr`, '-subj', `/CN=bench ${side}`);
    ssl('x509', '-req', '-in', `${side}.csr`, '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-out', `${side}-cert.pem`, '-days', '1', '-extfile', `${side}.ext`);
  }
  return { dir };
}
