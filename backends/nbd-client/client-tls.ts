import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type tls from 'node:tls';
import { pskCiphers, readPskFile, TlsSetupError } from '../../nbd/tls-credentials.js';
import type { NbdAddress } from './nbd-uri.js';

/**
 * The client side of a remote leg's TLS, from the files qemu and nbdkit use:
 * a folder with ca-cert.pem (and client-cert.pem + client-key.pem when the
 * server verifies clients), or a psktool file. Read once, when the leg is
 * configured, so a missing file is a start-up error naming it.
 */
export function clientTlsOptions(address: NbdAddress): tls.ConnectionOptions {
  const where = address.uri;
  if (address.tlsPskFile !== undefined) {
    let keys: Map<string, Buffer>;
    try {
      keys = readPskFile(address.tlsPskFile);
    } catch (error) {
      throw new TlsSetupError(where, error instanceof TlsSetupError ? error.problem : (error as Error).message);
    }
    const identity = address.tlsUsername ?? (keys.size === 1 ? [...keys.keys()][0] : undefined);
    if (identity === undefined) {
      throw new TlsSetupError(where, `${address.tlsPskFile} holds ${keys.size} users; name one as nbds://USER@host/...`);
    }
    const psk = keys.get(identity);
    if (psk === undefined) throw new TlsSetupError(where, `${address.tlsPskFile} has no key for ${identity}`);
    // Node offers PSK through OpenSSL's TLS 1.2 callback only (see tls-credentials.ts).
    return {
      minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2', ciphers: pskCiphers,
      pskCallback: () => ({ psk, identity }),
      checkServerIdentity: () => undefined,
    };
  }
  const dir = address.tlsCertificates!;
  if (!fs.statSync(dir, { throwIfNoEntry: false })?.isDirectory()) {
    throw new TlsSetupError(where, `tls-certificates ${dir} is not a folder (it holds ca-cert.pem, and client-cert.pem with client-key.pem)`);
  }
  const file = (name: string): Buffer | undefined => {
    const full = path.join(dir, name);
    return fs.existsSync(full) ? fs.readFileSync(full) : undefined;
  };
  const ca = file('ca-cert.pem');
  if (ca === undefined && address.tlsVerifyPeer) {
    throw new TlsSetupError(where, `${path.join(dir, 'ca-cert.pem')} does not exist (it is needed to verify the server; tls-verify-peer=false skips that)`);
  }
  const cert = file('client-cert.pem');
  const key = file('client-key.pem');
  if ((cert === undefined) !== (key === undefined)) {
    throw new TlsSetupError(where, `${dir} has only one of client-cert.pem and client-key.pem`);
  }
  const options: tls.ConnectionOptions = { ca, cert, key, minVersion: 'TLSv1.2', rejectUnauthorized: address.tlsVerifyPeer };
  // A unix socket has no host name to check unless tls-hostname names one; the chain is still verified.
  const servername = address.tlsHostname ?? (address.transport.kind === 'tcp' ? address.transport.host : undefined);
  if (servername === undefined) options.checkServerIdentity = () => undefined;
  // SNI carries names only; an address is checked against the certificate's IP entries through `host`.
  else if (net.isIP(servername) !== 0) options.host = servername;
  else options.servername = servername;
  return options;
}
