import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { seal, sealProblem } from '../blockdev/sealed-block.js';

/**
 * The write log (docs/write-log.md): a 4 KiB header, then records appended
 * in the order the device below completed them. Each record is a 48-byte
 * header followed, for writes, by the data.
 */
export const writeLogMagic = Buffer.from('NBDMWLOG');
export const writeLogVersion = 1;
export const writeLogHeaderBytes = 4096;
export const recordHeaderBytes = 48;
const recordMagic = 0x43524c57; // "WLRC"

export type RecordKind = 'write' | 'trim' | 'zeroes' | 'flush' | 'cut';
const kindCodes: Record<RecordKind, number> = { write: 1, trim: 2, zeroes: 3, flush: 4, cut: 5 };
const kindsByCode = new Map(Object.entries(kindCodes).map(([kind, code]) => [code, kind as RecordKind]));

export interface WriteLogHeader {
  uuid: Buffer;
  deviceSizeBytes: number;
  /** The device's contents when logging began live in `<log>.base`; otherwise they were all zeroes. */
  hasBaseImage: boolean;
  createdAtMs: number;
  name: string;
}

export interface WriteLogRecord {
  kind: RecordKind;
  fua: boolean;
  sequence: number;
  offsetBytes: number;
  lengthBytes: number;
  /** CLOCK_MONOTONIC in nanoseconds, shared by every process on the machine. */
  monotonicNs: bigint;
  /** Where the record starts in the file, and for writes where its data starts. */
  fileOffset: number;
  dataOffset: number;
}

export function newHeader(deviceSizeBytes: number, hasBaseImage: boolean, name: string): WriteLogHeader {
  return { uuid: randomBytes(16), deviceSizeBytes, hasBaseImage, createdAtMs: Date.now(), name };
}

export function encodeHeader(header: WriteLogHeader): Buffer {
  const block = Buffer.alloc(writeLogHeaderBytes);
  writeLogMagic.copy(block, 0);
  block.writeUInt32LE(writeLogVersion, 8);
  header.uuid.copy(block, 16);
  block.writeBigUInt64LE(BigInt(header.deviceSizeBytes), 32);
  block.writeUInt32LE(header.hasBaseImage ? 1 : 0, 40);
  block.writeBigUInt64LE(BigInt(header.createdAtMs), 48);
  const name = Buffer.from(header.name).subarray(0, 64);
  block.writeUInt32LE(name.length, 56);
  name.copy(block, 64);
  return seal(block);
}

export function decodeHeader(block: Buffer): WriteLogHeader {
  const problem = sealProblem(block, writeLogMagic, writeLogVersion, 'write log header');
  if (problem) throw new Error(problem);
  const nameLength = Math.min(block.readUInt32LE(56), 64);
  return {
    uuid: Buffer.from(block.subarray(16, 32)),
    deviceSizeBytes: Number(block.readBigUInt64LE(32)),
    hasBaseImage: block.readUInt32LE(40) === 1,
    createdAtMs: Number(block.readBigUInt64LE(48)),
    name: block.subarray(64, 64 + nameLength).toString(),
  };
}

export function encodeRecord(uuid: Buffer, kind: RecordKind, fua: boolean, sequence: number, offsetBytes: number,
  lengthBytes: number, monotonicNs: bigint, data: Buffer | undefined): Buffer {
  const header = Buffer.alloc(recordHeaderBytes);
  header.writeUInt32LE(recordMagic, 0);
  header.writeUInt8(kindCodes[kind], 4);
  header.writeUInt8(fua ? 1 : 0, 5);
  header.writeBigUInt64LE(BigInt(sequence), 8);
  header.writeBigUInt64LE(BigInt(offsetBytes), 16);
  header.writeBigUInt64LE(BigInt(lengthBytes), 24);
  header.writeBigUInt64LE(monotonicNs, 32);
  uuid.copy(header, 44, 0, 4);
  header.writeUInt32LE(crc32(data ?? Buffer.alloc(0), crc32(header)), 40);
  return header;
}

/**
 * Decodes the record whose header is `header`; `readData` fetches its data.
 * Returns why there is no valid record there instead (the end of a log cut
 * short by a crash looks like that).
 */
export function decodeRecord(header: Buffer, fileOffset: number, uuid: Buffer, expectedSequence: number,
  readData: (lengthBytes: number) => Buffer | undefined): { record: WriteLogRecord; data: Buffer | undefined } | { problem: string } {
  if (header.length < recordHeaderBytes) return { problem: header.length === 0 ? 'end' : 'torn record header' };
  const copy = Buffer.from(header);
  if (copy.readUInt32LE(0) !== recordMagic) return { problem: 'bad record magic' };
  if (!copy.subarray(44, 48).equals(uuid.subarray(0, 4))) return { problem: 'record from another write log' };
  const kind = kindsByCode.get(copy.readUInt8(4));
  if (kind === undefined) return { problem: `unknown record kind ${copy.readUInt8(4)}` };
  const sequence = Number(copy.readBigUInt64LE(8));
  if (sequence !== expectedSequence) return { problem: `sequence ${sequence}, expected ${expectedSequence}` };
  const lengthBytes = Number(copy.readBigUInt64LE(24));
  if (kind === 'write' && lengthBytes > writeRecordBytesMax) return { problem: `write of ${lengthBytes} bytes is implausible` };
  const data = kind === 'write' ? readData(lengthBytes) : undefined;
  if (kind === 'write' && data === undefined) return { problem: 'torn record data' };
  const stored = copy.readUInt32LE(40);
  copy.writeUInt32LE(0, 40);
  if (crc32(data ?? Buffer.alloc(0), crc32(copy)) !== stored) return { problem: 'record checksum mismatch' };
  return {
    record: {
      kind,
      fua: (copy.readUInt8(5) & 1) !== 0,
      sequence,
      offsetBytes: Number(copy.readBigUInt64LE(16)),
      lengthBytes,
      monotonicNs: copy.readBigUInt64LE(32),
      fileOffset,
      dataOffset: fileOffset + recordHeaderBytes,
    },
    data,
  };
}

/** Larger than any request we accept (32 MiB): a length beyond it is corruption. */
const writeRecordBytesMax = 64 * 1024 * 1024;

export function recordBytes(record: WriteLogRecord): number {
  return recordHeaderBytes + (record.kind === 'write' ? record.lengthBytes : 0);
}

/** A state the device below was promised to hold durably: after a flush, or a FUA write. */
export function isDurabilityMark(record: WriteLogRecord): boolean {
  return record.kind === 'flush' || (record.fua && record.kind !== 'cut');
}
