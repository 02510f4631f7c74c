import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { BlockError } from '../blockdev/errors.js';
import { pwriteAllSync } from '../sys/fs-io.js';
import { blockBytes, encodeMapPage, encodeSuperblock, geometryOf, mapPageOffset, type ThinSuperblock } from './thin-format.js';
import { entriesInPage } from './thin-map.js';

export const defaultChunkBytes = 64 * 1024;

export interface ThinCreateOptions {
  virtualSizeBytes: number;
  poolBytes: number;
  chunkSizeBytes?: number;
  overwrite?: boolean;
}

/** Refused before the first write: a device cannot be sized as the pool's file is, by truncation. */
export function refuseBlockDevice(path: string): void {
  if (fs.statSync(path, { throwIfNoEntry: false })?.isBlockDevice()) {
    throw new BlockError('EINVAL', `thin pool ${path} is a block device; a thin pool is a regular file whose size ` +
      'follows its capacity (pool grow). Use the device as a plain leg instead');
  }
}

/** Creates an empty pool file: superblock, one valid copy of every map page, sparse data area. */
export function createThinPool(path: string, options: ThinCreateOptions): ThinSuperblock {
  const chunkSizeBytes = options.chunkSizeBytes ?? defaultChunkBytes;
  if (chunkSizeBytes < blockBytes || (chunkSizeBytes & (chunkSizeBytes - 1)) !== 0) {
    throw new BlockError('EINVAL', `thin chunk size ${chunkSizeBytes} must be a power of two of at least 4096`);
  }
  if (options.virtualSizeBytes <= 0 || options.virtualSizeBytes % blockBytes !== 0) {
    throw new BlockError('EINVAL', `thin virtual size ${options.virtualSizeBytes} must be a positive multiple of 4096`);
  }
  const geometry = geometryOf(options.virtualSizeBytes, chunkSizeBytes);
  const capacityChunks = Math.min(geometry.chunkCount, Math.floor(options.poolBytes / chunkSizeBytes));
  if (capacityChunks < 1) throw new BlockError('EINVAL', `thin pool size ${options.poolBytes} is smaller than one ${chunkSizeBytes}-byte chunk`);
  const superblock: ThinSuperblock = {
    sequence: 1n, poolUuid: randomBytes(16), virtualSizeBytes: options.virtualSizeBytes, chunkSizeBytes, capacityChunks,
  };
  refuseBlockDevice(path);
  const fd = fs.openSync(path, options.overwrite ? 'w' : 'wx');
  try {
    pwriteAllSync(fd, encodeSuperblock(superblock), blockBytes);
    for (let page = 0; page < geometry.mapPageCount; page += 1) {
      pwriteAllSync(fd, encodeMapPage(superblock.poolUuid, page, 1n, new Uint32Array(entriesInPage(geometry, page))),
        mapPageOffset(page, 1));
    }
    fs.ftruncateSync(fd, geometry.dataStartBytes + capacityChunks * chunkSizeBytes);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return superblock;
}
