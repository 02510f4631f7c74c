import fs from 'node:fs';
import path from 'node:path';
import { runOk } from './tools.js';

/**
 * TLS credentials made the way qemu's and nbdkit's documentation make them:
 * GnuTLS's certtool for a CA, a server and a client certificate, psktool
 * for pre-shared keys. Folders follow the layout both read:
 * ca-cert.pem, server-cert.pem, server-key.pem / client-cert.pem, client-key.pem.
 */
export interface Pki {
  /** The server's folder: ca-cert.pem, server-cert.pem, server-key.pem. */
  serverDir: string;
  /** A client's folder (libnbd tls-certificates, qemu tls-creds-x509): ca-cert.pem, client-cert.pem, client-key.pem. */
  clientDir: string;
  /** The same CA, but no client certificate. */
  anonymousClientDir: string;
  caCert: string;
  caKey: string;
}

async function certtool(args: string[], template?: { file: string; text: string }): Promise<string> {
  if (template !== undefined) fs.writeFileSync(template.file, template.text);
  return (await runOk('certtool', args)).stdout;
}

async function privateKey(file: string): Promise<void> {
  await certtool(['--generate-privkey', '--key-type', 'ecdsa', '--outfile', file]);
}

/** A CA and the certificates it signs, under `dir/name`. `expiredServer` makes a server certificate that expired in 2020. */
export async function makePki(dir: string, name = 'pki', options: { expiredServer?: boolean } = {}): Promise<Pki> {
  const root = path.join(dir, name);
  const serverDir = path.join(root, 'server');
  const clientDir = path.join(root, 'client');
  const anonymousClientDir = path.join(root, 'anonymous');
  for (const folder of [serverDir, clientDir, anonymousClientDir]) fs.mkdirSync(folder, { recursive: true });
  const caKey = path.join(root, 'ca-key.pem');
  const caCert = path.join(root, 'ca-cert.pem');
  await privateKey(caKey);
  await certtool(['--generate-self-signed', '--load-privkey', caKey, '--template', path.join(root, 'ca.info'), '--outfile', caCert],
    { file: path.join(root, 'ca.info'), text: `cn = ${name} test CA\nca\ncert_signing_key\nexpiration_days = 30\n` });
  const validity = options.expiredServer
    ? 'activation_date = "2019-01-01 00:00:00"\nexpiration_date = "2020-01-01 00:00:00"\n' : 'expiration_days = 30\n';
  await issue(root, caCert, caKey, serverDir, 'server',
    `organization = nbd-mirror tests\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\n${validity}`);
  await issue(root, caCert, caKey, clientDir, 'client',
    'organization = nbd-mirror tests\ncn = test client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 30\n');
  for (const folder of [serverDir, clientDir, anonymousClientDir]) fs.copyFileSync(caCert, path.join(folder, 'ca-cert.pem'));
  return { serverDir, clientDir, anonymousClientDir, caCert, caKey };
}

async function issue(root: string, caCert: string, caKey: string, folder: string, role: 'server' | 'client', template: string): Promise<void> {
  const key = path.join(folder, `${role}-key.pem`);
  await privateKey(key);
  await certtool(['--generate-certificate', '--load-ca-certificate', caCert, '--load-ca-privkey', caKey, '--load-privkey', key,
    '--template', path.join(root, `${role}.info`), '--outfile', path.join(folder, `${role}-cert.pem`)],
  { file: path.join(root, `${role}.info`), text: template });
}

/** A psktool key file with one random key for `username`; returns the file. */
export async function makePskFile(file: string, username: string): Promise<string> {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  await runOk('psktool', ['-u', username, '-p', file]);
  return file;
}
