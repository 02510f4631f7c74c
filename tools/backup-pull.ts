import fs from 'node:fs';
import { RemoteLeg } from '../backends/nbd-client/remote-leg.js';
import { remoteSpecFor } from '../backends/nbd-client/remote-spec.js';
import { DIRTY_BITMAP_PREFIX, DIRTY_STATE } from '../nbd/constants.js';

/** Status is asked for this much at a time, and data copied in pieces of this size. */
const statusBytes = 256 * 1024 * 1024;
const copyBytes = 4 * 1024 * 1024;

export interface PullResult {
  sizeBytes: number;
  /** Bytes read from the export and written to the file. */
  copiedBytes: number;
  /** Extents copied (data extents of a full pull, dirty extents of an incremental one). */
  extents: number;
  mode: 'full' | 'incremental';
}

export class BackupPullError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BackupPullError';
  }
}

/**
 * The reference backup client. A full pull copies the export's allocated
 * extents (base:allocation) into a new sparse FILE. An incremental pull
 * (`since`) asks for qemu:dirty-bitmap:SINCE and copies exactly its dirty
 * extents over FILE, which must be the image the previous pull made: FILE
 * then holds the export as it is now. Any NBD server offering the context
 * works (nbd-mirror's checkpoints, qemu-nbd -B, qemu-storage-daemon).
 */
export async function backupPull(uri: string, file: string, options: { since?: string; force?: boolean;
  onProgress?: (doneBytes: number, totalBytes: number, copiedBytes: number) => void } = {}): Promise<PullResult> {
  const context = options.since === undefined ? undefined : `${DIRTY_BITMAP_PREFIX}${options.since}`;
  let spec;
  try {
    spec = remoteSpecFor(uri);
  } catch (error) {
    throw new BackupPullError((error as Error).message);
  }
  const source = await RemoteLeg.connect({ address: spec.address, name: 'backup source', readOnly: true,
    extraContexts: context ? [context] : [] }, spec.tls);
  try {
    const sizeBytes = source.sizeBytes;
    if (context !== undefined && !source.contexts.has(context)) {
      throw new BackupPullError(`${uri} does not offer ${context} (no such checkpoint or bitmap; list them with nbdinfo --list --content)`);
    }
    const fd = openTarget(file, sizeBytes, context !== undefined, options.force === true);
    let copiedBytes = 0;
    let extents = 0;
    const buffer = Buffer.allocUnsafe(copyBytes);
    try {
      for (let at = 0; at < sizeBytes;) {
        const runs = context === undefined
          ? (await source.blockStatus(at, Math.min(statusBytes, sizeBytes - at)))
            .map((extent) => ({ offsetBytes: extent.offsetBytes, lengthBytes: extent.lengthBytes, copy: !extent.zero }))
          : (await source.contextStatus(context, at, Math.min(statusBytes, sizeBytes - at)))
            .map((run) => ({ offsetBytes: run.offsetBytes, lengthBytes: run.lengthBytes, copy: (run.flags & DIRTY_STATE) !== 0 }));
        for (const run of runs) {
          if (run.copy) {
            extents += 1;
            for (let offset = run.offsetBytes; offset < run.offsetBytes + run.lengthBytes; offset += copyBytes) {
              const piece = buffer.subarray(0, Math.min(copyBytes, run.offsetBytes + run.lengthBytes - offset));
              await source.read(offset, piece);
              writeAll(fd, piece, offset);
              copiedBytes += piece.length;
            }
          }
          at = run.offsetBytes + run.lengthBytes;
          options.onProgress?.(at, sizeBytes, copiedBytes);
        }
        if (runs.length === 0) throw new BackupPullError(`${uri}: the server answered no block status at ${at}`);
      }
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    return { sizeBytes, copiedBytes, extents, mode: context === undefined ? 'full' : 'incremental' };
  } finally {
    await source.close();
  }
}

/** A full pull makes a new sparse file; an incremental one updates the previous pull's image in place. */
function openTarget(file: string, sizeBytes: number, incremental: boolean, force: boolean): number {
  if (incremental) {
    const size = fs.statSync(file, { throwIfNoEntry: false })?.size;
    if (size === undefined) throw new BackupPullError(`${file} does not exist: an incremental pull updates the image a previous pull made`);
    if (size !== sizeBytes) throw new BackupPullError(`${file} is ${size} bytes and the export ${sizeBytes}: it is not this export's image`);
    return fs.openSync(file, 'r+');
  }
  if (fs.existsSync(file) && !force) throw new BackupPullError(`${file} exists; a full pull writes a new image (use --force to replace it)`);
  const fd = fs.openSync(file, 'w');
  fs.ftruncateSync(fd, sizeBytes);
  return fd;
}

function writeAll(fd: number, data: Buffer, offsetBytes: number): void {
  for (let written = 0; written < data.length;) {
    written += fs.writeSync(fd, data, written, data.length - written, offsetBytes + written);
  }
}
