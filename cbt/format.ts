import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import { alignUp } from '../blockdev/range.js';

/**
 * On-disk layout of the checkpoint file: the changed-block bitmaps of every
 * checkpoint (docs/changed-blocks.md is the spec). The whole file is written
 * anew to a temporary name, synced and renamed over the old one, so a crash
 * leaves either the old file or the new one; the checksum covers all of it.
 */
export const checkpointMagic = Buffer.from('NBDMCBT\0', 'latin1');
export const checkpointVersion = 1;
export const checkpointHeaderBytes = 4096;
const entryOffset = 128;
const entryBytes = 128;
const nameBytesMax = 95;
const crcOffset = 16;
/** At most this many checkpoints at once (a backup chain needs two or three; each costs a bitmap). */
export const checkpointsMax = 16;
/** QEMU's default granularity for a qcow2 bitmap. */
export const defaultGranularityBytes = 64 * 1024;

export interface CheckpointRecord {
  name: string;
  uuid: Buffer;
  createdAtMs: number;
  /** One bit per granule, bit `g % 8` of byte `g / 8`: set when the granule may have changed since the checkpoint. */
  bitmap: Uint8Array;
}

export interface CheckpointFileState {
  mirrorUuid: Buffer;
  /** Identifies this file: a copy of another mirror's checkpoints is refused. */
  fileUuid: Buffer;
  sequence: bigint;
  granularityBytes: number;
  deviceSizeBytes: number;
  checkpoints: CheckpointRecord[];
}

export class CheckpointFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CheckpointFormatError';
  }
}

export function granulesFor(deviceSizeBytes: number, granularityBytes: number): number {
  return Math.ceil(deviceSizeBytes / granularityBytes);
}

export function bitmapBytesFor(deviceSizeBytes: number, granularityBytes: number): number {
  return Math.ceil(granulesFor(deviceSizeBytes, granularityBytes) / 8);
}

/** Why `name` cannot name a checkpoint, or undefined. The name becomes part of an NBD meta context and an export name. */
export function checkpointNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'is empty';
  if (Buffer.byteLength(name, 'utf8') > nameBytesMax) return `is longer than ${nameBytesMax} bytes`;
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)) return 'may hold only letters, digits, ".", "_" and "-", and starts with a letter or digit';
  return undefined;
}

export function encodeCheckpointFile(state: CheckpointFileState): Buffer {
  assert(state.checkpoints.length <= checkpointsMax, `${state.checkpoints.length} checkpoints, more than ${checkpointsMax}`);
  const bitmapBytes = bitmapBytesFor(state.deviceSizeBytes, state.granularityBytes);
  const stride = alignUp(Math.max(1, bitmapBytes), 4096);
  const buffer = Buffer.alloc(checkpointHeaderBytes + stride * state.checkpoints.length);
  checkpointMagic.copy(buffer, 0);
  buffer.writeUInt32LE(checkpointVersion, 8);
  buffer.writeUInt32LE(checkpointHeaderBytes, 12);
  buffer.writeBigUInt64LE(state.sequence, 24);
  state.mirrorUuid.copy(buffer, 32, 0, 16);
  state.fileUuid.copy(buffer, 48, 0, 16);
  buffer.writeUInt32LE(state.granularityBytes, 64);
  buffer.writeUInt32LE(state.checkpoints.length, 68);
  buffer.writeBigUInt64LE(BigInt(state.deviceSizeBytes), 72);
  buffer.writeBigUInt64LE(BigInt(bitmapBytes), 80);
  state.checkpoints.forEach((checkpoint, index) => {
    assert(checkpointNameProblem(checkpoint.name) === undefined, `checkpoint name "${checkpoint.name}" ${checkpointNameProblem(checkpoint.name)}`);
    assert(checkpoint.bitmap.length === bitmapBytes, `checkpoint ${checkpoint.name}: bitmap of ${checkpoint.bitmap.length} bytes, not ${bitmapBytes}`);
    const at = entryOffset + index * entryBytes;
    buffer.write(checkpoint.name, at, 'utf8');
    buffer.writeBigUInt64LE(BigInt(checkpoint.createdAtMs), at + 96);
    checkpoint.uuid.copy(buffer, at + 104, 0, 16);
    buffer.set(checkpoint.bitmap, checkpointHeaderBytes + index * stride);
  });
  buffer.writeUInt32LE(crc32(buffer), crcOffset);
  // Decoded back before it can be written, as every on-disk record here.
  const back = decodeCheckpointFile(buffer);
  assert(back.sequence === state.sequence && back.checkpoints.length === state.checkpoints.length &&
    back.checkpoints.every((checkpoint, index) => checkpoint.name === state.checkpoints[index].name &&
      Buffer.from(checkpoint.bitmap).equals(Buffer.from(state.checkpoints[index].bitmap))),
  'the checkpoint file does not decode to what was encoded');
  return buffer;
}

/** Decodes a checkpoint file, or explains precisely why it is not one. */
export function decodeCheckpointFile(buffer: Buffer): CheckpointFileState {
  if (buffer.length < checkpointHeaderBytes) throw new CheckpointFormatError(`${buffer.length} bytes, shorter than the header`);
  if (!buffer.subarray(0, 8).equals(checkpointMagic)) throw new CheckpointFormatError('bad magic (not an nbd-mirror checkpoint file)');
  const version = buffer.readUInt32LE(8);
  if (version !== checkpointVersion) throw new CheckpointFormatError(`unsupported version ${version} (this build reads ${checkpointVersion})`);
  if (buffer.readUInt32LE(12) !== checkpointHeaderBytes) throw new CheckpointFormatError(`unexpected header size ${buffer.readUInt32LE(12)}`);
  const copy = Buffer.from(buffer);
  const storedCrc = copy.readUInt32LE(crcOffset);
  copy.writeUInt32LE(0, crcOffset);
  if (crc32(copy) !== storedCrc) throw new CheckpointFormatError('checksum mismatch (torn or corrupted)');
  const granularityBytes = copy.readUInt32LE(64);
  if (granularityBytes < 4096 || (granularityBytes & (granularityBytes - 1)) !== 0) {
    throw new CheckpointFormatError(`granularity ${granularityBytes} is not a power of two of at least 4096`);
  }
  const count = copy.readUInt32LE(68);
  if (count > checkpointsMax) throw new CheckpointFormatError(`${count} checkpoints, more than ${checkpointsMax}`);
  const deviceSizeBytes = Number(copy.readBigUInt64LE(72));
  const bitmapBytes = Number(copy.readBigUInt64LE(80));
  if (bitmapBytes !== bitmapBytesFor(deviceSizeBytes, granularityBytes)) {
    throw new CheckpointFormatError(`bitmap size ${bitmapBytes} does not fit a ${deviceSizeBytes}-byte device at ${granularityBytes}-byte granules`);
  }
  const stride = alignUp(Math.max(1, bitmapBytes), 4096);
  if (copy.length !== checkpointHeaderBytes + stride * count) {
    throw new CheckpointFormatError(`${copy.length} bytes, but ${count} checkpoints take ${checkpointHeaderBytes + stride * count}`);
  }
  const checkpoints: CheckpointRecord[] = [];
  for (let index = 0; index < count; index += 1) {
    const at = entryOffset + index * entryBytes;
    const raw = copy.subarray(at, at + 96);
    const name = raw.subarray(0, raw.indexOf(0) === -1 ? 96 : raw.indexOf(0)).toString('utf8');
    const problem = checkpointNameProblem(name);
    if (problem) throw new CheckpointFormatError(`checkpoint ${index}: its name "${name}" ${problem}`);
    const start = checkpointHeaderBytes + index * stride;
    checkpoints.push({ name, createdAtMs: Number(copy.readBigUInt64LE(at + 96)), uuid: Buffer.from(copy.subarray(at + 104, at + 120)),
      bitmap: new Uint8Array(copy.subarray(start, start + bitmapBytes)) });
  }
  return {
    mirrorUuid: Buffer.from(copy.subarray(32, 48)), fileUuid: Buffer.from(copy.subarray(48, 64)), sequence: copy.readBigUInt64LE(24),
    granularityBytes, deviceSizeBytes, checkpoints,
  };
}
