/**
 * NBD URIs as libnbd reads them (its nbd_connect_uri, and the NBD project's
 * doc/uri.md): nbd://host[:port]/export, nbds://... for TLS, and
 * nbd+unix:///export?socket=PATH / nbds+unix:///export?socket=PATH.
 * nbds never falls back to plaintext; TLS query keys on a plain URI are an
 * error, not silently ignored, so a forgotten "s" is caught at start-up.
 */
export interface NbdAddress {
  /** The URI as given, for messages (credentials never appear in it: they are file paths). */
  uri: string;
  tls: boolean;
  transport: { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; socket: string };
  exportName: string;
  /** x509: a folder with ca-cert.pem and optionally client-cert.pem and client-key.pem. */
  tlsCertificates?: string;
  /** PSK: a psktool file of username:hexkey lines. */
  tlsPskFile?: string;
  /** The PSK identity (the URI's user part); defaults to the file's only user. */
  tlsUsername?: string;
  /** The name the server's certificate must carry; defaults to the URI's host. */
  tlsHostname?: string;
  /** x509 only: verify the server's certificate (libnbd's default: yes). */
  tlsVerifyPeer: boolean;
}

export class NbdUriError extends Error {
  constructor(readonly uri: string, problem: string) {
    super(`${uri}: ${problem}`);
    this.name = 'NbdUriError';
  }
}

const defaultPort = 10809;
const schemes = new Map([
  ['nbd:', { tls: false, unix: false }], ['nbds:', { tls: true, unix: false }],
  ['nbd+unix:', { tls: false, unix: true }], ['nbds+unix:', { tls: true, unix: true }],
]);
const queryKeys = new Set(['socket', 'tls-certificates', 'tls-psk-file', 'tls-hostname', 'tls-verify-peer']);

export function isNbdUri(text: string): boolean {
  return /^nbds?(\+unix)?:\/\//.test(text);
}

export function parseNbdUri(uri: string): NbdAddress {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw new NbdUriError(uri, 'is not a URI');
  }
  const scheme = schemes.get(url.protocol);
  if (!scheme) throw new NbdUriError(uri, `unknown scheme ${url.protocol} (use nbd://, nbds://, nbd+unix:// or nbds+unix://)`);
  for (const key of url.searchParams.keys()) {
    if (!queryKeys.has(key)) throw new NbdUriError(uri, `unknown query key ${key} (known: ${[...queryKeys].join(', ')})`);
  }
  const query = (key: string): string | undefined => url.searchParams.get(key) ?? undefined;
  const exportName = decodeURIComponent(url.pathname.replace(/^\//, ''));
  let transport: NbdAddress['transport'];
  if (scheme.unix) {
    const socket = query('socket');
    if (!socket) throw new NbdUriError(uri, `${url.protocol}// needs ?socket=PATH`);
    if (url.hostname !== '') throw new NbdUriError(uri, `${url.protocol}// takes no host (write ${url.protocol}///export?socket=PATH)`);
    transport = { kind: 'unix', socket };
  } else {
    if (url.hostname === '') throw new NbdUriError(uri, 'names no host');
    if (query('socket') !== undefined) throw new NbdUriError(uri, 'socket= is for nbd+unix:// and nbds+unix://');
    const port = url.port === '' ? defaultPort : Number(url.port);
    // WHATWG URL keeps IPv6 brackets in hostname; net.connect wants them gone.
    transport = { kind: 'tcp', host: url.hostname.replace(/^\[(.*)\]$/, '$1'), port };
  }
  const verify = query('tls-verify-peer');
  if (verify !== undefined && verify !== 'true' && verify !== 'false') {
    throw new NbdUriError(uri, `tls-verify-peer must be true or false, not ${verify}`);
  }
  const address: NbdAddress = {
    uri, tls: scheme.tls, transport, exportName,
    tlsCertificates: query('tls-certificates'), tlsPskFile: query('tls-psk-file'),
    tlsUsername: url.username === '' ? undefined : decodeURIComponent(url.username),
    tlsHostname: query('tls-hostname'), tlsVerifyPeer: verify !== 'false',
  };
  if (url.password !== '') throw new NbdUriError(uri, 'carries a password; PSK keys belong in the tls-psk-file');
  if (!scheme.tls) {
    const tlsKeys = ['tls-certificates', 'tls-psk-file', 'tls-hostname', 'tls-verify-peer'].filter((key) => query(key) !== undefined);
    if (tlsKeys.length > 0) throw new NbdUriError(uri, `${tlsKeys.join(', ')} given, but ${url.protocol}// is plaintext (use nbds)`);
  } else if (address.tlsCertificates !== undefined && address.tlsPskFile !== undefined) {
    throw new NbdUriError(uri, 'gives both tls-certificates and tls-psk-file; choose one kind of credentials');
  } else if (address.tlsCertificates === undefined && address.tlsPskFile === undefined) {
    throw new NbdUriError(uri, 'is nbds but names no credentials (add tls-certificates=DIR or tls-psk-file=FILE)');
  }
  return address;
}
