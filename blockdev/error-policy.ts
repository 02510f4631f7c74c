import { type BlockError, type BlockErrorCode } from './errors.js';

/**
 * What an error from a layer below means, decided in one place (docs/architecture.md, "Error policy"):
 * - `shutdown`: the device is closing; nothing failed, the request ends.
 * - `request`: this request was wrong for the device (out of range, unsupported, read-only);
 *   the device below is fine, so nothing is failed but the request.
 * - `retry`: the device could not do it now (a thin pool out of space); state is kept
 *   (dirty pages stay, the leg stays in sync) and a later retry may succeed.
 * - `fatal`: the medium failed, or may have lost data (EIO, a failed fdatasync); the leg,
 *   or the cache, or the device that cannot do without it, is failed.
 */
export type ErrorVerdict = 'shutdown' | 'request' | 'retry' | 'fatal';

const requestCodes: ReadonlySet<BlockErrorCode> = new Set(['EINVAL', 'ENOTSUP', 'EPERM', 'EROFS', 'EOVERFLOW']);

export function classifyError(error: BlockError): ErrorVerdict {
  if (error.code === 'ESHUTDOWN') return 'shutdown';
  if (error.retryable) return 'retry';
  if (requestCodes.has(error.code)) return 'request';
  return 'fatal';
}

/** Where an error was met: each site's action for each verdict is one row of errorPolicy. */
export type ErrorSite = 'leg-read' | 'leg-change' | 'leg-flush' | 'resync-leg' | 'cache-writeback' | 'cache-flush-below' | 'cache-pass-through';

/**
 * The action each site takes:
 * - `fail-request`: the request fails with the error; nothing else changes.
 * - `other-leg`: a read tries another in-sync leg; this leg is kept.
 * - `fail-leg`: the leg is marked faulty durably, then the request completes on the other in-sync legs.
 * - `keep-dirty`: the cache keeps every page dirty and readable; the flush fails with the error.
 * - `fail-cache`: the cache enters its failed state (EIO until an operator acts).
 */
export type ErrorAction = 'fail-request' | 'other-leg' | 'fail-leg' | 'keep-dirty' | 'fail-cache';

export const errorPolicy: Readonly<Record<ErrorSite, Readonly<Record<ErrorVerdict, ErrorAction>>>> = {
  'leg-read': { shutdown: 'fail-request', request: 'fail-request', retry: 'other-leg', fatal: 'fail-leg' },
  'leg-change': { shutdown: 'fail-request', request: 'fail-request', retry: 'fail-request', fatal: 'fail-leg' },
  'leg-flush': { shutdown: 'fail-request', request: 'fail-request', retry: 'fail-request', fatal: 'fail-leg' },
  'resync-leg': { shutdown: 'fail-request', request: 'fail-request', retry: 'fail-request', fatal: 'fail-leg' },
  'cache-writeback': { shutdown: 'fail-request', request: 'keep-dirty', retry: 'keep-dirty', fatal: 'fail-cache' },
  'cache-flush-below': { shutdown: 'fail-request', request: 'fail-request', retry: 'fail-request', fatal: 'fail-cache' },
  'cache-pass-through': { shutdown: 'fail-request', request: 'fail-request', retry: 'fail-request', fatal: 'fail-cache' },
};

/** The one question every layer asks: what do I do about this error here? */
export function errorAction(site: ErrorSite, error: BlockError): ErrorAction {
  return errorPolicy[site][classifyError(error)];
}
