import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';

/** nbdkit's names: off serves plaintext only, on offers STARTTLS, require refuses everything else first. */
export const tlsModes = ['off', 'on', 'require'] as const;
export type TlsMode = typeof tlsModes[number];

export interface TlsSettings {
  mode: TlsMode;
  /** x509: a folder laid out as qemu and nbdkit expect (ca-cert.pem, server-cert.pem, server-key.pem). */
  certificates: string | undefined;
  /** x509: a client must present a certificate signed by ca-cert.pem. */
  verifyPeer: boolean;
  /** PSK: a file of `username:hexkey` lines, as psktool writes it. */
  psk: string | undefined;
}

/** What a connection needs to upgrade itself after STARTTLS. */
export interface TlsServer {
  mode: 'on' | 'require';
  kind: 'x509' | 'psk';
  verifyPeer: boolean;
  /** Options for `new tls.TLSSocket(socket, ...)`; one secure context shared by every connection. */
  socketOptions: tls.TLSSocketOptions;
  /**
   * Under verifyPeer, why the client's certificate is refused (undefined: accepted).
   * A TLSSocket made outside tls.Server leaves `authorized` unset, so the
   * check is ours: OpenSSL already refused a client with no certificate and
   * proved the client holds the key of the one it sent.
   */
  refusePeer?: (peer: crypto.X509Certificate | undefined, now?: Date) => string | undefined;
}

/** A credential problem found at start-up, with the setting it concerns. */
export class TlsSetupError extends Error {
  constructor(readonly key: string, readonly problem: string) {
    super(`${key}: ${problem}`);
    this.name = 'TlsSetupError';
  }
}

/**
 * PSK suites with forward secrecy first. Node offers PSK only through
 * OpenSSL's TLS 1.2 callback (its TLS 1.3 PSK needs session tickets), so a
 * PSK server speaks TLS 1.2, which the NBD spec makes the version every
 * implementation MUST support; GnuTLS clients (libnbd, qemu) negotiate it.
 */
export const pskCiphers = [
  'ECDHE-PSK-CHACHA20-POLY1305', 'DHE-PSK-AES256-GCM-SHA384', 'DHE-PSK-AES128-GCM-SHA256',
  'PSK-AES256-GCM-SHA384', 'PSK-AES128-GCM-SHA256', 'PSK-CHACHA20-POLY1305',
].join(':');

/** Checks the credentials once, at start-up, so a bad file is a precise message and not a failed handshake later. */
export function loadTlsServer(settings: TlsSettings, now = new Date()): TlsServer | undefined {
  if (settings.mode === 'off') {
    if (settings.certificates !== undefined || settings.psk !== undefined) {
      throw new TlsSetupError('tls.mode', 'is off, but credentials are given (set tls.mode to on or require to use them)');
    }
    return undefined;
  }
  if (settings.certificates !== undefined && settings.psk !== undefined) {
    throw new TlsSetupError('tls.psk', 'and tls.certificates are both set; choose one kind of credentials');
  }
  if (settings.psk !== undefined) {
    if (settings.verifyPeer) throw new TlsSetupError('tls.verifyPeer', 'applies to x509 certificates; a PSK client is verified by its key');
    const keys = readPskFile(settings.psk);
    return {
      mode: settings.mode, kind: 'psk', verifyPeer: false,
      socketOptions: {
        isServer: true, minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2', ciphers: pskCiphers,
        pskCallback: (_socket: tls.TLSSocket, identity: string) => keys.get(identity) ?? null,
      } as tls.TLSSocketOptions,
    };
  }
  if (settings.certificates === undefined) {
    throw new TlsSetupError('tls.certificates', `is required with tls.mode ${settings.mode} (or give tls.psk)`);
  }
  const socketOptions = x509SocketOptions(settings.certificates, settings.verifyPeer, now);
  const server: TlsServer = { mode: settings.mode, kind: 'x509', verifyPeer: settings.verifyPeer, socketOptions };
  if (settings.verifyPeer) {
    const authorities = pemBlocks(fs.readFileSync(path.join(settings.certificates, 'ca-cert.pem'), 'latin1'))
      .map((block) => new crypto.X509Certificate(block));
    server.refusePeer = (peer, at = new Date()) => refusePeer(authorities, peer, at);
  }
  return server;
}

function pemBlocks(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

/** The client's certificate must be signed by a certificate of ca-cert.pem and valid now. */
function refusePeer(authorities: crypto.X509Certificate[], peer: crypto.X509Certificate | undefined, now: Date): string | undefined {
  if (peer === undefined) return 'the client sent no certificate';
  const subject = peer.subject.replace(/\n/g, ', ');
  if (!authorities.some((authority) => peer.checkIssued(authority) && peer.verify(authority.publicKey))) {
    return `the client certificate (${subject}) is not signed by ca-cert.pem`;
  }
  if (new Date(peer.validTo) < now) return `the client certificate (${subject}) expired on ${new Date(peer.validTo).toISOString()}`;
  if (new Date(peer.validFrom) > now) return `the client certificate (${subject}) is not valid yet`;
  return undefined;
}

function x509SocketOptions(dir: string, verifyPeer: boolean, now: Date): tls.TLSSocketOptions {
  const key = 'tls.certificates';
  let stat: fs.Stats;
  try {
    stat = fs.statSync(dir);
  } catch (error) {
    throw new TlsSetupError(key, `${dir}: ${describeFsError(error)}`);
  }
  if (!stat.isDirectory()) throw new TlsSetupError(key, `${dir} is not a folder (it holds ca-cert.pem, server-cert.pem, server-key.pem)`);
  const certPem = readPem(dir, 'server-cert.pem', key);
  const keyPem = readPem(dir, 'server-key.pem', key);
  const caPath = path.join(dir, 'ca-cert.pem');
  const caPem = verifyPeer || fs.existsSync(caPath) ? readPem(dir, 'ca-cert.pem', key) : undefined;
  const certificate = parseCertificate(certPem, path.join(dir, 'server-cert.pem'), now);
  let privateKey: crypto.KeyObject;
  try {
    privateKey = crypto.createPrivateKey(keyPem);
  } catch (error) {
    throw new TlsSetupError(key, `${path.join(dir, 'server-key.pem')} is not a PEM private key (${(error as Error).message})`);
  }
  if (!certificate.checkPrivateKey(privateKey)) {
    throw new TlsSetupError(key, `${path.join(dir, 'server-key.pem')} does not match the key of server-cert.pem`);
  }
  if (caPem !== undefined) parseCertificate(caPem, caPath, now);
  try {
    const secureContext = tls.createSecureContext({ cert: certPem, key: keyPem, ca: caPem, minVersion: 'TLSv1.2' });
    return { isServer: true, secureContext, requestCert: verifyPeer, rejectUnauthorized: verifyPeer };
  } catch (error) {
    throw new TlsSetupError(key, `${dir}: ${(error as Error).message}`);
  }
}

function readPem(dir: string, name: string, key: string): Buffer {
  const file = path.join(dir, name);
  try {
    return fs.readFileSync(file);
  } catch (error) {
    throw new TlsSetupError(key, `${file}: ${describeFsError(error)}`);
  }
}

function parseCertificate(pem: Buffer, file: string, now: Date): crypto.X509Certificate {
  let certificate: crypto.X509Certificate;
  try {
    certificate = new crypto.X509Certificate(pem);
  } catch (error) {
    throw new TlsSetupError('tls.certificates', `${file} is not a PEM certificate (${(error as Error).message})`);
  }
  if (new Date(certificate.validTo) < now) {
    throw new TlsSetupError('tls.certificates', `${file} expired on ${new Date(certificate.validTo).toISOString()}`);
  }
  if (new Date(certificate.validFrom) > now) {
    throw new TlsSetupError('tls.certificates', `${file} is not valid before ${new Date(certificate.validFrom).toISOString()}`);
  }
  return certificate;
}

/** psktool's format: one `username:hexkey` per line; blank lines are ignored. */
export function readPskFile(file: string): Map<string, Buffer> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    throw new TlsSetupError('tls.psk', `${file}: ${describeFsError(error)}`);
  }
  const keys = new Map<string, Buffer>();
  text.split('\n').forEach((raw, index) => {
    const line = raw.trim();
    if (line === '') return;
    const where = `${file} line ${index + 1}`;
    const colon = line.lastIndexOf(':');
    if (colon <= 0) throw new TlsSetupError('tls.psk', `${where} is not username:hexkey`);
    const username = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex)) throw new TlsSetupError('tls.psk', `${where}: the key of ${username} is not an even number of hex digits`);
    if (keys.has(username)) throw new TlsSetupError('tls.psk', `${where}: ${username} is listed twice`);
    keys.set(username, Buffer.from(hex, 'hex'));
  });
  if (keys.size === 0) throw new TlsSetupError('tls.psk', `${file} holds no keys (make one with: psktool -u NAME -p ${file})`);
  return keys;
}

function describeFsError(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'does not exist';
  if (code === 'EACCES') return 'cannot be read (permission denied)';
  if (code === 'EISDIR') return 'is a folder, not a file';
  return (error as Error).message;
}
