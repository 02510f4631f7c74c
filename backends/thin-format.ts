import assert from 'node:assert/strict';
import fs from 'node:fs';
import { alignUp } from '../blockdev/range.js';
import { seal, sealProblem } from '../blockdev/sealed-block.js';

/**
 * On-disk layout of a thin pool file (docs/thin-pool.md is the spec).
 *
 * The superblock and every map page exist twice; an update writes the copy
 * the previous one did not and the newest valid copy wins, so a torn write
 * can only damage the copy being replaced. A map page names its pool UUID and
 * its index, so a page from another pool or another place is never trusted.
 */
export const thinMagic = Buffer.from('NBDMTHIN', 'ascii');
export const mapPageMagic = Buffer.from('NBDMTMAP', 'ascii');
export const thinVersion = 1;
export const blockBytes = 4096;
/** Bytes 8192..16383 hold the mirror leg label (mirror/leg-label.ts), outside the data area. */
export const thinLabelOffset = 2 * blockBytes;
export const mapAreaOffset = 4 * blockBytes;
const mapHeaderBytes = 64;
export const entriesPerMapPage = (blockBytes - mapHeaderBytes) / 4;

export interface ThinSuperblock {
  sequence: bigint;
  poolUuid: Buffer;
  virtualSizeBytes: number;
  chunkSizeBytes: number;
  /** Physical chunks the pool may hold; raised by grow. */
  capacityChunks: number;
}

export interface ThinGeometry {
  chunkCount: number;
  mapPageCount: number;
  dataStartBytes: number;
}

export function geometryOf(virtualSizeBytes: number, chunkSizeBytes: number): ThinGeometry {
  const chunkCount = Math.ceil(virtualSizeBytes / chunkSizeBytes);
  const mapPageCount = Math.ceil(chunkCount / entriesPerMapPage);
  const dataStartBytes = alignUp(mapAreaOffset + mapPageCount * 2 * blockBytes, chunkSizeBytes);
  return { chunkCount, mapPageCount, dataStartBytes };
}

export function mapPageOffset(page: number, copy: number): number {
  return mapAreaOffset + (page * 2 + copy) * blockBytes;
}

export function encodeSuperblock(superblock: ThinSuperblock): Buffer {
  const buffer = Buffer.alloc(blockBytes);
  thinMagic.copy(buffer, 0);
  buffer.writeUInt32LE(thinVersion, 8);
  buffer.writeBigUInt64LE(superblock.sequence, 16);
  superblock.poolUuid.copy(buffer, 24, 0, 16);
  buffer.writeBigUInt64LE(BigInt(superblock.virtualSizeBytes), 40);
  buffer.writeUInt32LE(superblock.chunkSizeBytes, 48);
  buffer.writeBigUInt64LE(BigInt(superblock.capacityChunks), 56);
  const sealed = seal(buffer);
  // Decoded back before it can be written: an encoder bug is a crash here, not a pool refused at the next open.
  const back = decodeSuperblock(sealed);
  assert(typeof back !== 'string' && back.sequence === superblock.sequence && back.poolUuid.equals(superblock.poolUuid.subarray(0, 16)) &&
    back.virtualSizeBytes === superblock.virtualSizeBytes && back.chunkSizeBytes === superblock.chunkSizeBytes &&
    back.capacityChunks === superblock.capacityChunks, `thin superblock ${superblock.sequence} does not decode to what was encoded`);
  return sealed;
}

export function decodeSuperblock(buffer: Buffer): ThinSuperblock | string {
  const problem = sealProblem(buffer, thinMagic, thinVersion, 'superblock');
  if (problem) return problem;
  const superblock: ThinSuperblock = {
    sequence: buffer.readBigUInt64LE(16),
    poolUuid: Buffer.from(buffer.subarray(24, 40)),
    virtualSizeBytes: Number(buffer.readBigUInt64LE(40)),
    chunkSizeBytes: buffer.readUInt32LE(48),
    capacityChunks: Number(buffer.readBigUInt64LE(56)),
  };
  const { chunkSizeBytes, virtualSizeBytes, capacityChunks } = superblock;
  if (chunkSizeBytes < blockBytes || (chunkSizeBytes & (chunkSizeBytes - 1)) !== 0) {
    return `superblock: chunk size ${chunkSizeBytes} is not a power of two of at least 4096`;
  }
  if (!Number.isSafeInteger(virtualSizeBytes) || virtualSizeBytes <= 0 || virtualSizeBytes % blockBytes !== 0) {
    return `superblock: virtual size ${virtualSizeBytes} is not a positive multiple of 4096`;
  }
  if (!Number.isSafeInteger(capacityChunks) || capacityChunks > Math.ceil(virtualSizeBytes / chunkSizeBytes)) {
    return `superblock: capacity ${capacityChunks} chunks exceeds the virtual size`;
  }
  return superblock;
}

/** The newest valid of the pool file's two superblock copies, or why neither is valid. */
export function readSuperblock(fd: number): ThinSuperblock | string {
  const copies = [Buffer.alloc(blockBytes), Buffer.alloc(blockBytes)];
  fs.readSync(fd, copies[0], 0, blockBytes, 0);
  fs.readSync(fd, copies[1], 0, blockBytes, blockBytes);
  const decoded = copies.map(decodeSuperblock);
  const valid = decoded.filter((entry): entry is ThinSuperblock => typeof entry !== 'string');
  if (valid.length === 0) return decoded.join('; ');
  return valid.reduce((newest, entry) => (entry.sequence > newest.sequence ? entry : newest));
}

/**
 * One map page: entriesPerMapPage entries of virtual chunk → physical chunk
 * + 1 (0 = unallocated), for virtual chunks page·entriesPerMapPage onwards.
 */
export function encodeMapPage(poolUuid: Buffer, page: number, sequence: bigint, entries: Uint32Array): Buffer {
  const buffer = Buffer.alloc(blockBytes);
  mapPageMagic.copy(buffer, 0);
  buffer.writeUInt32LE(thinVersion, 8);
  buffer.writeBigUInt64LE(sequence, 16);
  poolUuid.copy(buffer, 24, 0, 16);
  buffer.writeUInt32LE(page, 40);
  buffer.writeUInt32LE(entries.length, 44);
  for (let index = 0; index < entries.length; index += 1) buffer.writeUInt32LE(entries[index], mapHeaderBytes + index * 4);
  return seal(buffer);
}

export interface MapPageCopy {
  sequence: bigint;
  entries: Uint32Array;
}

export function decodeMapPage(buffer: Buffer, poolUuid: Buffer, page: number): MapPageCopy | string {
  const problem = sealProblem(buffer, mapPageMagic, thinVersion, `map page ${page}`);
  if (problem) return problem;
  if (!buffer.subarray(24, 40).equals(poolUuid)) return `map page ${page}: belongs to another pool`;
  const storedPage = buffer.readUInt32LE(40);
  if (storedPage !== page) return `map page ${page}: holds page ${storedPage}`;
  const count = buffer.readUInt32LE(44);
  if (count > entriesPerMapPage) return `map page ${page}: ${count} entries`;
  const entries = new Uint32Array(count);
  for (let index = 0; index < count; index += 1) entries[index] = buffer.readUInt32LE(mapHeaderBytes + index * 4);
  return { sequence: buffer.readBigUInt64LE(16), entries };
}
