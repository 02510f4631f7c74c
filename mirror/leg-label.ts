import fs from 'node:fs';
import { fileOrDeviceSize } from '../backends/file-leg.js';
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
  return seal(buffer);
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
}

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

export function readLabel(path: string, thin = false): LabelRead {
  const fd = fs.openSync(path, 'r');
  try {
    const where = placement(fd, path, thin);
    if (where.problem) return { fileSizeBytes: where.legBytes, problem: where.problem };
    const area = Buffer.alloc(labelAreaBytes);
    fs.readSync(fd, area, 0, labelAreaBytes, where.labelOffset);
    const decoded = [decodeLabel(area.subarray(0, labelCopyBytes)), decodeLabel(area.subarray(labelCopyBytes))];
    const valid = decoded.filter((entry): entry is LegLabel => typeof entry !== 'string');
    if (valid.length === 0) return { fileSizeBytes: where.legBytes, problem: decoded.join('; ') };
    const label = valid.reduce((newest, entry) => (entry.sequence > newest.sequence ? entry : newest));
    return { fileSizeBytes: where.legBytes, label };
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
