import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import { alignUp } from '../blockdev/range.js';

/**
 * On-disk layout of the dirty-region log (docs/region-log.md is the spec).
 * The log holds two copies; each update writes the copy the previous one did
 * not, then fdatasyncs, so a torn write can only damage the copy being
 * replaced and the newest valid copy always describes a state we committed.
 */
export const logMagic = Buffer.from('NBDMRLOG', 'ascii');
export const logVersion = 1;
export const headerBytes = 4096;
export const legSlotsMax = 8;
const legRecordOffset = 128;
const legRecordBytes = 64;
const crcOffset = 16;

export type LegState = 'empty' | 'in_sync' | 'faulty' | 'rebuilding';
/** How a rebuilding leg is being brought back: only set-bit regions (re-add) or everything (replace). */
export type RebuildMode = 'none' | 'bitmap' | 'full';

const legStateCodes: LegState[] = ['empty', 'in_sync', 'faulty', 'rebuilding'];
const rebuildModeCodes: RebuildMode[] = ['none', 'bitmap', 'full'];

export interface LegRecord {
  /** 16 bytes; all zero for an empty slot. */
  uuid: Buffer;
  state: LegState;
  rebuildMode: RebuildMode;
  /** The events value written to this leg's label when it was last brought in sync. */
  events: bigint;
  /** Full rebuild: everything below this offset is copied and durable on the leg. */
  rebuildCheckpointBytes: number;
  /** When the leg was marked faulty (ms since the epoch), 0 if never. */
  failedAtMs: number;
  /**
   * Failed by the operator (nbd-mirror fail): a remote leg so held is not
   * brought back by the reconnector, across restarts too, until the operator
   * re-adds, replaces or removes it.
   */
  heldByOperator: boolean;
}

/** Leg record flags (byte 18; written as zero by builds before it, so an older log reads as "no flags"). */
const legFlagHeldByOperator = 1;

export interface LogState {
  mirrorUuid: Buffer;
  regionSizeBytes: number;
  deviceSizeBytes: number;
  regionCount: number;
  /** Incremented by every commit; the copy with the highest valid sequence wins. */
  sequence: bigint;
  /** Set by a clean shutdown, cleared by the first commit after start. */
  cleanShutdown: boolean;
  /** Leg labels are being rewritten to eventsCurrent; a label may still hold eventsPrevious. */
  labelUpdatePending: boolean;
  eventsCurrent: bigint;
  eventsPrevious: bigint;
  legs: LegRecord[];
  /** One bit per region, set while the region may differ between legs. */
  dirty: Uint8Array;
}

export function bitmapBytesFor(regionCount: number): number {
  return Math.ceil(regionCount / 8);
}

/** Bytes of one copy: header plus the bitmap, padded to 4 KiB so copies never share a block. */
export function copyBytesFor(regionCount: number): number {
  return headerBytes + alignUp(bitmapBytesFor(regionCount), 4096);
}

export class LogFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LogFormatError';
  }
}

export function encodeCopy(state: LogState): Buffer {
  const bitmapBytes = bitmapBytesFor(state.regionCount);
  const buffer = Buffer.alloc(copyBytesFor(state.regionCount));
  logMagic.copy(buffer, 0);
  buffer.writeUInt32LE(logVersion, 8);
  buffer.writeUInt32LE(headerBytes, 12);
  buffer.writeUInt32LE((state.cleanShutdown ? 1 : 0) | (state.labelUpdatePending ? 2 : 0), 20);
  buffer.writeBigUInt64LE(state.sequence, 24);
  state.mirrorUuid.copy(buffer, 32, 0, 16);
  buffer.writeUInt32LE(state.regionSizeBytes, 48);
  buffer.writeUInt32LE(state.legs.length, 52);
  buffer.writeBigUInt64LE(BigInt(state.deviceSizeBytes), 56);
  buffer.writeBigUInt64LE(BigInt(state.regionCount), 64);
  buffer.writeBigUInt64LE(state.eventsCurrent, 72);
  buffer.writeBigUInt64LE(state.eventsPrevious, 80);
  buffer.writeBigUInt64LE(BigInt(bitmapBytes), 88);
  state.legs.forEach((leg, slot) => {
    const at = legRecordOffset + slot * legRecordBytes;
    leg.uuid.copy(buffer, at, 0, 16);
    buffer.writeUInt8(legStateCodes.indexOf(leg.state), at + 16);
    buffer.writeUInt8(rebuildModeCodes.indexOf(leg.rebuildMode), at + 17);
    buffer.writeUInt8(leg.heldByOperator ? legFlagHeldByOperator : 0, at + 18);
    buffer.writeBigUInt64LE(leg.events, at + 24);
    buffer.writeBigUInt64LE(BigInt(leg.rebuildCheckpointBytes), at + 32);
    buffer.writeBigUInt64LE(BigInt(leg.failedAtMs), at + 40);
  });
  buffer.set(state.dirty.subarray(0, bitmapBytes), headerBytes);
  buffer.writeUInt32LE(crc32(buffer), crcOffset);
  assertDecodesTo(buffer, state);
  return buffer;
}

/**
 * Every copy is decoded back before it can be written (TigerBeetle's habit,
 * on in production): a field the encoder lost or put in the wrong place is a
 * crash here, not a log that a restart misreads.
 */
function assertDecodesTo(buffer: Buffer, state: LogState): void {
  const back = decodeCopy(buffer);
  const bitmapBytes = bitmapBytesFor(state.regionCount);
  assert(back.sequence === state.sequence && back.cleanShutdown === state.cleanShutdown &&
    back.labelUpdatePending === state.labelUpdatePending && back.mirrorUuid.equals(state.mirrorUuid.subarray(0, 16)) &&
    back.regionSizeBytes === state.regionSizeBytes && back.deviceSizeBytes === state.deviceSizeBytes &&
    back.regionCount === state.regionCount && back.eventsCurrent === state.eventsCurrent &&
    back.eventsPrevious === state.eventsPrevious && back.legs.length === state.legs.length,
  `region log copy ${state.sequence}: its header does not decode to what was encoded`);
  back.legs.forEach((leg, slot) => {
    const meant = state.legs[slot];
    assert(leg.uuid.equals(meant.uuid.subarray(0, 16)) && leg.state === meant.state && leg.rebuildMode === meant.rebuildMode &&
      leg.events === meant.events && leg.rebuildCheckpointBytes === meant.rebuildCheckpointBytes && leg.failedAtMs === meant.failedAtMs &&
      leg.heldByOperator === meant.heldByOperator,
    `region log copy ${state.sequence}: leg slot ${slot} does not decode to what was encoded`);
  });
  assert(Buffer.from(back.dirty).equals(Buffer.from(state.dirty.buffer, state.dirty.byteOffset, bitmapBytes)),
    `region log copy ${state.sequence}: the bitmap does not decode to what was encoded`);
}

/**
 * The region count a copy's fixed header fields give (the checksum covers the
 * whole copy, so it cannot be checked from the header alone), or a
 * LogFormatError saying why they are not a header.
 */
function headerRegionCount(buffer: Buffer): number {
  if (buffer.length < headerBytes) throw new LogFormatError(`copy is ${buffer.length} bytes, shorter than its header`);
  if (!buffer.subarray(0, 8).equals(logMagic)) throw new LogFormatError('bad magic (not an nbd-mirror region log)');
  const version = buffer.readUInt32LE(8);
  if (version !== logVersion) throw new LogFormatError(`unsupported version ${version} (this build reads ${logVersion})`);
  if (buffer.readUInt32LE(12) !== headerBytes) throw new LogFormatError(`unexpected header size ${buffer.readUInt32LE(12)}`);
  const regionCount = Number(buffer.readBigUInt64LE(64));
  const bitmapBytes = Number(buffer.readBigUInt64LE(88));
  if (!Number.isSafeInteger(regionCount) || regionCount <= 0 || bitmapBytes !== bitmapBytesFor(regionCount)) {
    throw new LogFormatError(`inconsistent region count ${regionCount} / bitmap size ${bitmapBytes}`);
  }
  return regionCount;
}

/** The size of the copy a header describes, or undefined when it is not one. Locates copy 1 on a block device. */
export function copyBytesOfHeader(header: Buffer): number | undefined {
  try {
    return copyBytesFor(headerRegionCount(header));
  } catch (error) {
    if (error instanceof LogFormatError) return undefined;
    throw error;
  }
}

/** Decodes one copy, or explains precisely why it is not a valid copy. */
export function decodeCopy(buffer: Buffer): LogState {
  const regionCount = headerRegionCount(buffer);
  const copyBytes = copyBytesFor(regionCount);
  if (buffer.length < copyBytes) throw new LogFormatError(`copy truncated: ${buffer.length} of ${copyBytes} bytes`);
  const copy = Buffer.from(buffer.subarray(0, copyBytes));
  const storedCrc = copy.readUInt32LE(crcOffset);
  copy.writeUInt32LE(0, crcOffset);
  if (crc32(copy) !== storedCrc) throw new LogFormatError('checksum mismatch (torn or corrupted copy)');
  const flags = copy.readUInt32LE(20);
  const legCount = copy.readUInt32LE(52);
  if (legCount < 1 || legCount > legSlotsMax) throw new LogFormatError(`leg count ${legCount} outside 1..${legSlotsMax}`);
  const regionSizeBytes = copy.readUInt32LE(48);
  const deviceSizeBytes = Number(copy.readBigUInt64LE(56));
  if (regionSizeBytes < 4096 || (regionSizeBytes & (regionSizeBytes - 1)) !== 0 ||
      Math.ceil(deviceSizeBytes / regionSizeBytes) !== regionCount) {
    throw new LogFormatError(`region size ${regionSizeBytes} does not fit device size ${deviceSizeBytes} and ${regionCount} regions`);
  }
  const legs: LegRecord[] = [];
  for (let slot = 0; slot < legCount; slot += 1) {
    const at = legRecordOffset + slot * legRecordBytes;
    const state = legStateCodes[copy.readUInt8(at + 16)];
    const rebuildMode = rebuildModeCodes[copy.readUInt8(at + 17)];
    if (state === undefined || rebuildMode === undefined) throw new LogFormatError(`leg slot ${slot}: unknown state`);
    const flags = copy.readUInt8(at + 18);
    if ((flags & ~legFlagHeldByOperator) !== 0) {
      throw new LogFormatError(`leg slot ${slot}: unknown flags 0x${flags.toString(16)} (written by a newer build?)`);
    }
    if (flags !== 0 && state !== 'faulty') throw new LogFormatError(`leg slot ${slot}: held by the operator but ${state}`);
    legs.push({
      uuid: Buffer.from(copy.subarray(at, at + 16)),
      state,
      rebuildMode,
      events: copy.readBigUInt64LE(at + 24),
      rebuildCheckpointBytes: Number(copy.readBigUInt64LE(at + 32)),
      failedAtMs: Number(copy.readBigUInt64LE(at + 40)),
      heldByOperator: (flags & legFlagHeldByOperator) !== 0,
    });
  }
  return {
    mirrorUuid: Buffer.from(copy.subarray(32, 48)),
    regionSizeBytes,
    deviceSizeBytes,
    regionCount,
    sequence: copy.readBigUInt64LE(24),
    cleanShutdown: (flags & 1) !== 0,
    labelUpdatePending: (flags & 2) !== 0,
    eventsCurrent: copy.readBigUInt64LE(72),
    eventsPrevious: copy.readBigUInt64LE(80),
    legs,
    dirty: new Uint8Array(copy.subarray(headerBytes, headerBytes + bitmapBytesFor(regionCount))),
  };
}

export function formatUuid(uuid: Buffer): string {
  const hex = uuid.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The regions whose bit is set, in order; whole zero bytes are skipped. */
export function regionsSet(bitmap: Uint8Array, regionCount: number): number[] {
  const regions: number[] = [];
  for (let byte = 0; byte < bitmap.length; byte += 1) {
    if (bitmap[byte] === 0) continue;
    for (let bit = 0; bit < 8; bit += 1) {
      const region = byte * 8 + bit;
      if (region < regionCount && (bitmap[byte] & (1 << bit)) !== 0) regions.push(region);
    }
  }
  return regions;
}
