/**
 * Errors are values with an errno-like code. Every layer rejects only with
 * BlockError, so the NBD layer can map any failure to a wire error without
 * guessing, and the page cache can tell a retryable failure from a fatal one.
 */
export type BlockErrorCode =
  | 'EPERM' | 'EIO' | 'ENOMEM' | 'EINVAL' | 'ENOSPC' | 'EOVERFLOW'
  | 'ENOTSUP' | 'ESHUTDOWN' | 'EROFS' | 'EAGAIN' | 'EBUSY';

export class BlockError extends Error {
  readonly code: BlockErrorCode;
  /** A later retry of the same operation may succeed (ENOSPC on a thin pool). */
  readonly retryable: boolean;

  constructor(code: BlockErrorCode, message: string, options: { retryable?: boolean; cause?: unknown } = {}) {
    super(`${code}: ${message}`, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BlockError';
    this.code = code;
    this.retryable = options.retryable ?? code === 'ENOSPC';
  }
}

export function isBlockError(value: unknown): value is BlockError {
  return value instanceof BlockError;
}

const errnoByName: Record<string, BlockErrorCode> = {
  EPERM: 'EPERM', EACCES: 'EPERM', EROFS: 'EROFS', EIO: 'EIO', ENOMEM: 'ENOMEM',
  EINVAL: 'EINVAL', ENOSPC: 'ENOSPC', EDQUOT: 'ENOSPC', EFBIG: 'ENOSPC',
  EOVERFLOW: 'EOVERFLOW', ENOTSUP: 'ENOTSUP', EOPNOTSUPP: 'ENOTSUP', ESHUTDOWN: 'ESHUTDOWN',
  EAGAIN: 'EAGAIN', EBUSY: 'EBUSY',
};

/** Converts a Node system error (or anything thrown) into a BlockError. */
export function toBlockError(error: unknown, context: string): BlockError {
  if (error instanceof BlockError) return error;
  const systemCode = (error as NodeJS.ErrnoException | undefined)?.code;
  const code = (systemCode && errnoByName[systemCode]) || 'EIO';
  const detail = error instanceof Error ? error.message : String(error);
  return new BlockError(code, `${context}: ${detail}`, { cause: error });
}

const errnoNumbers: Record<number, BlockErrorCode> = {
  1: 'EPERM', 5: 'EIO', 11: 'EAGAIN', 12: 'ENOMEM', 13: 'EPERM', 16: 'EBUSY', 22: 'EINVAL', 27: 'ENOSPC',
  28: 'ENOSPC', 30: 'EROFS', 75: 'EOVERFLOW', 95: 'ENOTSUP', 108: 'ESHUTDOWN', 122: 'ENOSPC',
};

/** Converts a negative errno returned by the native addon. */
export function fromNegativeErrno(negativeErrno: number, context: string): BlockError {
  const errno = -negativeErrno;
  return new BlockError(errnoNumbers[errno] ?? 'EIO', `${context}: errno ${errno}`);
}
