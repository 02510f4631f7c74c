import assert from 'node:assert/strict';
import fs from 'node:fs';
import { fileOrDeviceSize } from '../sys/device-size.js';
import type { LegSpec } from '../backends/leg-spec.js';
import { readSuperblock, thinLabelOffset } from '../backends/thin-format.js';
import { seal, sealProblem } from '../blockdev/sealed-block.js';
import { ThinLeg } from '../backends/thin-leg.js';

/**
 * Each leg carries a label in its last 8 KiB (two 4 KiB copies, newest valid
 * wins), like md's 1.0 superblock at the end of the device: the data area
 * starts at byte 0, so a leg file is also a plain disk image. A thin leg keeps
 * its label in a fixed place of the pool's metadata instead (its data area is
 * virtual); the configuration says which kind a leg is, never its contents.
 * The label says which mirror and which slot the leg belongs to and the
 * events value it was last brought in sync at; docs/region-log.md specifies it.
 */
export const labelMagic = Buffer.from('NBDMLEG1', 'ascii');
export const labelVersion = 1;
export const labelCopyBytes = 4096;
export const labelAreaBytes = 2 * labelCopyBytes;

export interface LegLabel {
  mirrorUuid: Buffer;
  legUuid: Buffer;
  slot: number;
  dataSizeBytes: number;
  events: bigint;
  sequence: bigint;
}

export function encodeLabel(label: LegLabel): Buffer {
  const buffer = Buffer.alloc(labelCopyBytes);
  labelMagic.copy(buffer, 0);
  buffer.writeUInt32LE(labelVersion, 8);
  buffer.writeBigUInt64LE(label.sequence, 16);
  label.mirrorUuid.copy(buffer, 24, 0, 16);
  label.legUuid.copy(buffer, 40, 0, 16);
  buffer.writeUInt32LE(label.slot, 56);
  buffer.writeBigUInt64LE(BigInt(label.dataSizeBytes), 64);
  buffer.writeBigUInt64LE(label.events, 72);
  const sealed = seal(buffer);
  // Decoded back before it can be written: an encoder bug is a crash here, not a leg refused at the next start.
  const back = decodeLabel(sealed);
  assert(typeof back !== 'string' && back.sequence === label.sequence && back.mirrorUuid.equals(label.mirrorUuid.subarray(0, 16)) &&
    back.legUuid.equals(label.legUuid.subarray(0, 16)) && back.slot === label.slot && back.dataSizeBytes === label.dataSizeBytes &&
    back.events === label.events, `leg label of slot ${label.slot} does not decode to what was encoded`);
  return sealed;
}

export function decodeLabel(buffer: Buffer): LegLabel | string {
  const problem = sealProblem(buffer, labelMagic, labelVersion, 'nbd-mirror leg label');
  if (problem) return problem;
  return {
    sequence: buffer.readBigUInt64LE(16),
    mirrorUuid: Buffer.from(buffer.subarray(24, 40)),
    legUuid: Buffer.from(buffer.subarray(40, 56)),
    slot: buffer.readUInt32LE(56),
    dataSizeBytes: Number(buffer.readBigUInt64LE(64)),
    events: buffer.readBigUInt64LE(72),
  };
}

export interface LabelRead {
  /** Data area plus label area, as a plain leg holding the same data would be. */
  fileSizeBytes: number;
  label?: LegLabel;
  /** Why no label was found. */
  problem?: string;
  /**
   * Set when the leg grew (truncate -s +N, lvextend) and its label was found
   * where the end used to be, at this offset, instead of at the end.
   */
  movedFromBytes?: number;
}

/** How far past the data area a grown leg's old label is looked for (in reads of labelSearchChunkBytes). */
const labelSearchLimitBytes = 1024 ** 3;
const labelSearchChunkBytes = 1024 * 1024;

interface Placement {
  legBytes: number;
  labelOffset: number;
  problem?: string;
}

function placement(fd: number, path: string, thin: boolean): Placement {
  if (!thin) {
    const legBytes = fileOrDeviceSize(fd, path);
    if (legBytes < labelAreaBytes * 2) return { legBytes, labelOffset: 0, problem: `${legBytes} bytes is too small for a leg` };
    return { legBytes, labelOffset: legBytes - labelAreaBytes };
  }
  const superblock = readSuperblock(fd);
  if (typeof superblock === 'string') return { legBytes: 0, labelOffset: 0, problem: `not a thin pool (${superblock})` };
  return { legBytes: superblock.virtualSizeBytes + labelAreaBytes, labelOffset: thinLabelOffset };
}

export function newestLabel(area: Buffer): LegLabel | string {
  const decoded = [decodeLabel(area.subarray(0, labelCopyBytes)), decodeLabel(area.subarray(labelCopyBytes))];
  const valid = decoded.filter((entry): entry is LegLabel => typeof entry !== 'string');
  if (valid.length === 0) return decoded.join('; ');
  return valid.reduce((newest, entry) => (entry.sequence > newest.sequence ? entry : newest));
}

/**
 * Reads a leg's label from its end. With `dataSizeBytes` (the mirror's size),
 * a plain leg that is larger than its data and label is also searched where
 * its end used to be: a grown leg keeps its data, and its label sits at the
 * old end (the file's first end is dataSizeBytes + label; a block device's
 * old end is found by a bounded scan for the label's magic).
 */
export function readLabel(path: string, thin = false, dataSizeBytes?: number): LabelRead {
  const fd = fs.openSync(path, 'r');
  try {
    const where = placement(fd, path, thin);
    if (where.problem) return { fileSizeBytes: where.legBytes, problem: where.problem };
    const area = Buffer.alloc(labelAreaBytes);
    fs.readSync(fd, area, 0, labelAreaBytes, where.labelOffset);
    const atEnd = newestLabel(area);
    if (typeof atEnd !== 'string') return { fileSizeBytes: where.legBytes, label: atEnd };
    if (!thin && dataSizeBytes !== undefined && where.labelOffset > dataSizeBytes) {
      const moved = findMovedLabel(fd, dataSizeBytes, where.labelOffset);
      if (moved) return { fileSizeBytes: where.legBytes, label: moved.label, movedFromBytes: moved.offset };
    }
    return { fileSizeBytes: where.legBytes, problem: atEnd };
  } finally {
    fs.closeSync(fd);
  }
}

function findMovedLabel(fd: number, dataSizeBytes: number, endLabelOffset: number): { label: LegLabel; offset: number } | undefined {
  const area = Buffer.alloc(labelAreaBytes);
  const tryAt = (offset: number): { label: LegLabel; offset: number } | undefined => {
    if (offset + labelAreaBytes > endLabelOffset + labelAreaBytes) return undefined;
    fs.readSync(fd, area, 0, labelAreaBytes, offset);
    const label = newestLabel(area);
    return typeof label === 'string' ? undefined : { label, offset };
  };
  const fileLayout = tryAt(dataSizeBytes);
  if (fileLayout) return fileLayout;
  const chunk = Buffer.alloc(labelSearchChunkBytes);
  const limit = Math.min(endLabelOffset, dataSizeBytes + labelSearchLimitBytes);
  for (let at = dataSizeBytes; at < limit; at += labelSearchChunkBytes) {
    const read = fs.readSync(fd, chunk, 0, Math.min(labelSearchChunkBytes, limit - at), at);
    for (let inner = 0; inner + labelMagic.length <= read; inner += labelCopyBytes) {
      if (!chunk.subarray(inner, inner + labelMagic.length).equals(labelMagic)) continue;
      // Either copy may be the first valid one found: try the area starting here and the one before.
      const found = tryAt(at + inner) ?? (at + inner - labelCopyBytes >= dataSizeBytes ? tryAt(at + inner - labelCopyBytes) : undefined);
      if (found) return found;
    }
  }
  return undefined;
}

/**
 * Moves a grown leg's label from its old end to its new one (both copies, the
 * sequence continuing), then clears the old area, which lies past the data:
 * a later shrink back must not find an outdated label there.
 */
export function relocateLabel(path: string, label: LegLabel, fromBytes: number): void {
  const fd = fs.openSync(path, 'r+');
  try {
    const where = placement(fd, path, false);
    if (where.problem) throw new Error(`cannot label ${path}: ${where.problem}`);
    const first = encodeLabel({ ...label, sequence: label.sequence + 1n });
    const second = encodeLabel({ ...label, sequence: label.sequence + 2n });
    fs.writeSync(fd, Number((label.sequence + 1n) % 2n) === 0 ? first : second, 0, labelCopyBytes, where.labelOffset);
    fs.writeSync(fd, Number((label.sequence + 1n) % 2n) === 0 ? second : first, 0, labelCopyBytes, where.labelOffset + labelCopyBytes);
    fs.fdatasyncSync(fd);
    fs.writeSync(fd, Buffer.alloc(labelAreaBytes), 0, labelAreaBytes, fromBytes);
    fs.fdatasyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Writes the next label copy over the older one and syncs it. The sequence
 * continues from whatever valid label the leg holds now (1 on a fresh leg).
 */
export function writeLabel(path: string, label: Omit<LegLabel, 'sequence'>, thin = false): LegLabel {
  const sequence = (readLabel(path, thin).label?.sequence ?? 0n) + 1n;
  const next: LegLabel = { ...label, sequence };
  const fd = fs.openSync(path, 'r+');
  try {
    const where = placement(fd, path, thin);
    if (where.problem) throw new Error(`cannot label ${path}: ${where.problem}`);
    fs.writeSync(fd, encodeLabel(next), 0, labelCopyBytes, where.labelOffset + Number(sequence % 2n) * labelCopyBytes);
    fs.fdatasyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return next;
}

/**
 * Creates a leg holding dataSizeBytes of data plus its label: a sparse file,
 * an empty thin pool of the configured size, or (overwrite only) a block
 * device, whose old contents stay: see isBlockDeviceLeg.
 */
export function createLegFile(leg: LegSpec, dataSizeBytes: number, label: Omit<LegLabel, 'sequence'>,
  options: { overwrite?: boolean } = {}): LegLabel {
  if (leg.thin) {
    ThinLeg.create(leg.path, { virtualSizeBytes: dataSizeBytes, poolBytes: leg.thin.poolBytes,
      chunkSizeBytes: leg.thin.chunkSizeBytes, overwrite: options.overwrite });
    return writeLabel(leg.path, label, true);
  }
  if (options.overwrite && isBlockDeviceLeg(leg)) {
    const problem = blockDeviceTooSmall(leg.path, dataSizeBytes);
    if (problem) throw new Error(problem);
    return writeLabel(leg.path, label);
  }
  const fd = fs.openSync(leg.path, options.overwrite ? 'w' : 'wx');
  try {
    fs.ftruncateSync(fd, dataSizeBytes + labelAreaBytes);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return writeLabel(leg.path, label);
}

/**
 * A block device keeps whatever it held before: two such legs differ from the
 * start, so a mirror created on one begins with a full sync (as md's does).
 */
export function isBlockDeviceLeg(leg: LegSpec): boolean {
  return leg.thin === undefined && (fs.statSync(leg.path, { throwIfNoEntry: false })?.isBlockDevice() ?? false);
}

/** Why a block device cannot hold dataSizeBytes with the label at its end (it cannot be grown as a file is). */
export function blockDeviceTooSmall(path: string, dataSizeBytes: number): string | undefined {
  const fd = fs.openSync(path, 'r');
  try {
    const deviceBytes = fileOrDeviceSize(fd, path);
    if (deviceBytes >= dataSizeBytes + labelAreaBytes) return undefined;
    return `block device ${path} holds ${deviceBytes} bytes, fewer than the ${dataSizeBytes} of data ` +
      `plus the ${labelAreaBytes}-byte label at its end`;
  } finally {
    fs.closeSync(fd);
  }
}
