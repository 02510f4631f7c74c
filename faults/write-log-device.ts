import fs from 'node:fs';
import { pwriteAllSync } from '../sys/fs-io.js';
import type { BlockDevice, Extent, WriteFlags, ZeroFlags } from '../blockdev/types.js';
import {
  decodeHeader, decodeRecord, encodeHeader, encodeRecord, newHeader, recordBytes, recordHeaderBytes, type RecordKind,
  type WriteLogHeader, type WriteLogRecord, writeLogHeaderBytes,
} from './write-log-format.js';

export class WriteLogError extends Error {
  constructor(readonly path: string, message: string) {
    super(`write log ${path}: ${message}`);
    this.name = 'WriteLogError';
  }
}

/**
 * Our analogue of dm-log-writes: passes everything to the device below and
 * appends each completed write, trim, write-zeroes and flush to a log file,
 * in completion order, with FUA marked. `WriteLogReader` rebuilds the device
 * as it stood at any flush or FUA mark.
 */
export class WriteLogDevice implements BlockDevice {
  readonly sizeBytes: number;
  readonly blockSizeBytes: number;
  readonly capabilities;
  private nextSequence: number;
  private endOffset: number;

  private constructor(readonly inner: BlockDevice, readonly path: string, private readonly fd: number,
    readonly header: WriteLogHeader, position: { nextSequence: number; endOffset: number }) {
    this.sizeBytes = inner.sizeBytes;
    this.blockSizeBytes = inner.blockSizeBytes;
    this.capabilities = inner.capabilities;
    this.nextSequence = position.nextSequence;
    this.endOffset = position.endOffset;
  }

  /**
   * Appends to an existing log (after a restart), or creates one; a device
   * that already holds data is first copied to `<path>.base`, the state
   * replay starts from.
   */
  static async open(inner: BlockDevice, path: string, name: string): Promise<WriteLogDevice> {
    if (fs.existsSync(path)) {
      const reader = WriteLogReader.open(path);
      try {
        if (reader.header.deviceSizeBytes !== inner.sizeBytes) {
          throw new WriteLogError(path, `records a device of ${reader.header.deviceSizeBytes} bytes, this one is ${inner.sizeBytes}`);
        }
        const end = reader.scanEnd();
        const fd = fs.openSync(path, 'r+');
        // A torn tail from the crash is cut off so new records follow the last valid one.
        fs.ftruncateSync(fd, end.endOffset);
        return new WriteLogDevice(inner, path, fd, reader.header, end);
      } finally {
        reader.close();
      }
    }
    const hasData = await copyBaseImage(inner, `${path}.base`);
    const header = newHeader(inner.sizeBytes, hasData, name);
    const fd = fs.openSync(path, 'wx+');
    pwriteAllSync(fd, encodeHeader(header), 0);
    fs.fsyncSync(fd);
    return new WriteLogDevice(inner, path, fd, header, { nextSequence: 0, endOffset: writeLogHeaderBytes });
  }

  /** Appends synchronously, so records are in the order completions reached us. */
  private append(kind: RecordKind, fua: boolean, offsetBytes: number, lengthBytes: number, data?: Buffer): void {
    const header = encodeRecord(this.header.uuid, kind, fua, this.nextSequence, offsetBytes, lengthBytes,
      process.hrtime.bigint(), data);
    pwriteAllSync(this.fd, header, this.endOffset);
    if (data) pwriteAllSync(this.fd, data, this.endOffset + recordHeaderBytes);
    this.endOffset += recordHeaderBytes + (data?.length ?? 0);
    this.nextSequence += 1;
  }

  /** Records that a power cut rolled the device back (the rollback's writes follow as ordinary records). */
  markCut(): void {
    this.append('cut', false, 0, 0);
  }

  read(offsetBytes: number, target: Buffer): Promise<void> {
    return this.inner.read(offsetBytes, target);
  }

  async write(offsetBytes: number, data: Buffer, flags: WriteFlags): Promise<void> {
    await this.inner.write(offsetBytes, data, flags);
    this.append('write', flags.fua, offsetBytes, data.length, data);
  }

  async trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void> {
    await this.inner.trim(offsetBytes, lengthBytes, flags);
    this.append('trim', flags.fua, offsetBytes, lengthBytes);
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    await this.inner.writeZeroes(offsetBytes, lengthBytes, flags);
    this.append('zeroes', flags.fua, offsetBytes, lengthBytes);
  }

  async flush(): Promise<void> {
    await this.inner.flush();
    this.append('flush', false, 0, 0);
  }

  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    return this.inner.blockStatus(offsetBytes, lengthBytes);
  }

  async close(): Promise<void> {
    fs.closeSync(this.fd);
    await this.inner.close();
  }
}

/** Copies the device's data regions into a sparse file; false (and no file) when the device holds only zeroes. */
async function copyBaseImage(device: BlockDevice, basePath: string): Promise<boolean> {
  const chunk = Buffer.alloc(1 << 20);
  let fd: number | undefined;
  try {
    for (let at = 0; at < device.sizeBytes; at += chunk.length) {
      const piece = chunk.subarray(0, Math.min(chunk.length, device.sizeBytes - at));
      await device.read(at, piece);
      if (piece.every((byte) => byte === 0)) continue;
      if (fd === undefined) {
        fd = fs.openSync(basePath, 'w');
        fs.ftruncateSync(fd, device.sizeBytes);
      }
      pwriteAllSync(fd, piece, at);
    }
    if (fd !== undefined) fs.fsyncSync(fd);
    return fd !== undefined;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** Reads a write log record by record, and rebuilds the device at any record. */
export class WriteLogReader {
  readonly fileBytes: number;

  private constructor(readonly path: string, private readonly fd: number, readonly header: WriteLogHeader) {
    this.fileBytes = fs.fstatSync(fd).size;
  }

  static open(path: string): WriteLogReader {
    let fd: number;
    try {
      fd = fs.openSync(path, 'r');
    } catch (error) {
      throw new WriteLogError(path, `cannot open: ${(error as Error).message}`);
    }
    try {
      const block = Buffer.alloc(writeLogHeaderBytes);
      const read = fs.readSync(fd, block, 0, block.length, 0);
      if (read < block.length) throw new WriteLogError(path, `truncated: ${read} bytes, smaller than its header`);
      try {
        return new WriteLogReader(path, fd, decodeHeader(block));
      } catch (error) {
        throw new WriteLogError(path, (error as Error).message);
      }
    } catch (error) {
      fs.closeSync(fd);
      throw error;
    }
  }

  /** Every valid record in order, with the data of writes; stops at the first invalid one and says why. */
  *records(): Generator<{ record: WriteLogRecord; data: Buffer | undefined }, { endOffset: number; nextSequence: number; stop: string }> {
    let at = writeLogHeaderBytes;
    let sequence = 0;
    for (;;) {
      const header = Buffer.alloc(Math.min(recordHeaderBytes, Math.max(0, this.fileBytes - at)));
      if (header.length > 0) fs.readSync(this.fd, header, 0, header.length, at);
      const decoded = decodeRecord(header, at, this.header.uuid, sequence, (lengthBytes) => {
        if (at + recordHeaderBytes + lengthBytes > this.fileBytes) return undefined;
        const data = Buffer.alloc(lengthBytes);
        fs.readSync(this.fd, data, 0, lengthBytes, at + recordHeaderBytes);
        return data;
      });
      if ('problem' in decoded) return { endOffset: at, nextSequence: sequence, stop: decoded.problem };
      yield decoded;
      at += recordBytes(decoded.record);
      sequence += 1;
    }
  }

  scanEnd(): { endOffset: number; nextSequence: number; stop: string } {
    const iterator = this.records();
    for (;;) {
      const step = iterator.next();
      if (step.done) return step.value;
    }
  }

  /** The state replay starts from: the base image copied at creation, or zeroes. */
  startImage(imagePath: string): number {
    if (this.header.hasBaseImage) fs.copyFileSync(`${this.path}.base`, imagePath);
    else fs.rmSync(imagePath, { force: true });
    const fd = fs.openSync(imagePath, this.header.hasBaseImage ? 'r+' : 'w+');
    fs.ftruncateSync(fd, this.header.deviceSizeBytes);
    return fd;
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

/** Applies one record to an image being rebuilt (trim reads back as zeroes on our legs). */
export function applyRecord(imageFd: number, record: WriteLogRecord, data: Buffer | undefined): void {
  if (record.kind === 'write') {
    pwriteAllSync(imageFd, data!, record.offsetBytes);
  } else if (record.kind === 'trim' || record.kind === 'zeroes') {
    const zeroes = Buffer.alloc(Math.min(record.lengthBytes, 1 << 20));
    for (let at = 0; at < record.lengthBytes; at += zeroes.length) {
      pwriteAllSync(imageFd, zeroes.subarray(0, Math.min(zeroes.length, record.lengthBytes - at)), record.offsetBytes + at);
    }
  }
}
