import path from 'node:path';
import type tls from 'node:tls';
import { TlsSetupError } from '../../nbd/tls-credentials.js';
import { clientTlsOptions } from './client-tls.js';
import { type NbdAddress, parseNbdUri } from './nbd-uri.js';
import { remoteLegDefaults } from './remote-leg.js';

/** A leg that is an export on another NBD server. */
export interface RemoteSpec {
  address: NbdAddress;
  /** Client TLS options, read from the credential files when the leg was configured. */
  tls?: tls.ConnectionOptions;
  /** Failfast: a request unanswered this long fails the leg. */
  failfastMs: number;
  connectTimeoutMs: number;
  /** Connections to open when the remote advertises multi-conn. */
  connections: number;
}

/**
 * Checks a remote leg's URI and reads its TLS credentials now, so a typo or
 * a missing certificate is an error at configuration time, not a failed
 * connection later. Relative paths in the URI are taken from `baseDir`.
 */
export function remoteSpecFor(uri: string, settings: Partial<Pick<RemoteSpec, 'failfastMs' | 'connectTimeoutMs' | 'connections'>> = {},
  baseDir = process.cwd()): RemoteSpec {
  const address = parseNbdUri(uri);
  if (address.tlsCertificates !== undefined) address.tlsCertificates = path.resolve(baseDir, address.tlsCertificates);
  if (address.tlsPskFile !== undefined) address.tlsPskFile = path.resolve(baseDir, address.tlsPskFile);
  if (address.transport.kind === 'unix') address.transport.socket = path.resolve(baseDir, address.transport.socket);
  let credentials: tls.ConnectionOptions | undefined;
  if (address.tls) {
    try {
      credentials = clientTlsOptions(address);
    } catch (error) {
      throw new Error(error instanceof TlsSetupError ? `${uri}: ${error.problem}` : (error as Error).message);
    }
  }
  return {
    address, tls: credentials,
    failfastMs: settings.failfastMs ?? remoteLegDefaults.requestTimeoutMs,
    connectTimeoutMs: settings.connectTimeoutMs ?? remoteLegDefaults.connectTimeoutMs,
    connections: settings.connections ?? remoteLegDefaults.connections,
  };
}
