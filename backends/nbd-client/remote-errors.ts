import { BlockError } from '../../blockdev/errors.js';

const nbdErrnoNames: Record<number, string> = {
  1: 'EPERM', 5: 'EIO', 12: 'ENOMEM', 22: 'EINVAL', 28: 'ENOSPC', 75: 'EOVERFLOW', 95: 'ENOTSUP', 108: 'ESHUTDOWN',
};

/**
 * What a remote's error means for the leg. Every request we send was checked
 * against the export first, so an EPERM or EINVAL from the remote is not the
 * caller's mistake but a leg that cannot do its job (it turned read-only, its
 * export shrank): EIO, which fails the leg. Only ENOSPC (a thin remote, kept
 * retryable as our own thin legs are) and ENOTSUP (a fast zero refused) keep
 * their meaning.
 */
export function remoteError(errno: number, message: string | undefined, what: string, leg: string): BlockError {
  const name = nbdErrnoNames[errno] ?? `error ${errno}`;
  const detail = `${leg}: ${what} failed on the remote (${name}${message ? `: ${message}` : ''})`;
  if (errno === 28) return new BlockError('ENOSPC', detail);
  if (errno === 95) return new BlockError('ENOTSUP', detail);
  return new BlockError('EIO', detail);
}
