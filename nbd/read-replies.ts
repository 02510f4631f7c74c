import type { BufferPool, PooledBuffer } from '../blockdev/buffer-pool.js';
import { assertExtentsTile } from '../blockdev/checked-device.js';
import { type BlockDevice, type Extent, finishedNow } from '../blockdev/types.js';
import { BlockError } from '../blockdev/errors.js';
import { BASE_ALLOCATION, CommandFlag, DIRTY_BITMAP_PREFIX, DIRTY_STATE, SIMPLE_REPLY_HEADER_BYTES, StateFlag } from './constants.js';
import type { DirtyBitmapSource, MetaContext } from './negotiation.js';
import {
  blockStatusChunk, OFFSET_DATA_PREFIX_BYTES, offsetHoleChunk, structuredNone, writeOffsetDataPrefix, writeSimpleHeader,
} from './replies.js';
import type { ReplyWriter } from './reply-writer.js';
import type { RequestHeader } from './requests.js';

/** The metadata contexts a connection chose, and where the dirty-bitmap ones are read. */
export interface BlockStatusContexts {
  contexts: MetaContext[];
  bitmaps: DirtyBitmapSource | undefined;
}

export interface ReadReplyOptions {
  bufferPool: BufferPool;
  /** See ConnectionOptions.fileReplyBytesMin. */
  fileReplyBytesMin: number;
  /** See ConnectionOptions.sparseReadBytesMin. */
  sparseReadBytesMin: number;
}

/**
 * The replies that carry data, for one attached connection: reads (simple,
 * structured in one OFFSET_DATA chunk, or sparse with OFFSET_HOLE chunks;
 * by sendfile when the device lends the range as a file range) and block
 * status. Errors are not answered here: the promise rejects and the
 * connection sends the error reply.
 */
export class ReadReplies {
  constructor(private readonly device: BlockDevice, private readonly writer: ReplyWriter, private readonly structured: boolean,
    private readonly options: ReadReplyOptions, private readonly statusContexts: BlockStatusContexts = { contexts: [], bitmaps: undefined }) {}

  /** A read the device served from memory in this turn is answered in this turn (returns finishedNow). */
  serveRead(request: RequestHeader, offsetBytes: number): Promise<void> {
    const lengthBytes = request.lengthBytes;
    if (!this.structured) {
      return this.sendReadData(SIMPLE_REPLY_HEADER_BYTES, offsetBytes, lengthBytes,
        (target) => writeSimpleHeader(target, 0, request.cookie));
    }
    if (lengthBytes === 0) {
      this.writer.send(structuredNone(request.cookie));
      return finishedNow;
    }
    const fragmentsAllowed = (request.flags & CommandFlag.DF) === 0;
    if (fragmentsAllowed && lengthBytes >= this.options.sparseReadBytesMin && this.device.capabilities.blockStatus) {
      return this.serveReadWithHoles(request, offsetBytes);
    }
    return this.sendOffsetData(request, offsetBytes);
  }

  /**
   * One BLOCK_STATUS chunk per chosen context, the last one ending the
   * reply. Every chunk is computed before any is sent, so a failure (a
   * checkpoint removed since the client chose it) is one error reply.
   */
  async serveBlockStatus(request: RequestHeader, offsetBytes: number): Promise<void> {
    const one = (request.flags & CommandFlag.REQ_ONE) !== 0;
    const chunks: Array<{ id: number; descriptors: Array<{ lengthBytes: number; flags: number }> }> = [];
    for (const context of this.statusContexts.contexts) {
      if (context.name === BASE_ALLOCATION) {
        chunks.push({ id: context.id, descriptors: await this.allocationDescriptors(offsetBytes, request.lengthBytes, one) });
        continue;
      }
      const checkpoint = context.name.slice(DIRTY_BITMAP_PREFIX.length);
      const runs = this.statusContexts.bitmaps?.runs(checkpoint, offsetBytes, request.lengthBytes, one);
      if (runs === undefined) throw new BlockError('EINVAL', `block status: checkpoint ${checkpoint} was removed since ${context.name} was chosen`);
      chunks.push({ id: context.id, descriptors: runs.map((run) => ({ lengthBytes: run.lengthBytes, flags: run.dirty ? DIRTY_STATE : 0 })) });
    }
    chunks.forEach((chunk, index) => this.writer.send(blockStatusChunk(request.cookie, chunk.id, chunk.descriptors, index === chunks.length - 1)));
  }

  private async allocationDescriptors(offsetBytes: number, lengthBytes: number, one: boolean): Promise<Array<{ lengthBytes: number; flags: number }>> {
    const extents = await this.device.blockStatus(offsetBytes, lengthBytes);
    assertExtentsTile(extents, offsetBytes, lengthBytes, this.device.sizeBytes);
    const endBytes = offsetBytes + lengthBytes;
    const descriptors: Array<{ lengthBytes: number; flags: number }> = [];
    let position = offsetBytes;
    for (const extent of extents) {
      const extentEnd = Math.min(extent.offsetBytes + extent.lengthBytes, endBytes);
      if (extentEnd <= position) continue;
      const flags = (extent.hole ? StateFlag.HOLE : 0) | (extent.zero ? StateFlag.ZERO : 0);
      descriptors.push({ lengthBytes: extentEnd - position, flags });
      position = extentEnd;
      if (one || position >= endBytes) break;
    }
    return descriptors;
  }

  /** A large structured read: zero extents go out as OFFSET_HOLE chunks. */
  private async serveReadWithHoles(request: RequestHeader, offsetBytes: number): Promise<void> {
    const extents = await this.device.blockStatus(offsetBytes, request.lengthBytes);
    assertExtentsTile(extents, offsetBytes, request.lengthBytes, this.device.sizeBytes);
    if (extents.some((extent) => extent.zero)) return this.serveSparseRead(request, offsetBytes, extents);
    // Returning the promise would cost an async function two more turns to adopt it, even a settled one.
    const sending = this.sendOffsetData(request, offsetBytes);
    if (sending !== finishedNow) await sending;
  }

  /** The whole structured read as one OFFSET_DATA chunk that ends the reply. */
  private sendOffsetData(request: RequestHeader, offsetBytes: number): Promise<void> {
    const lengthBytes = request.lengthBytes;
    return this.sendReadData(OFFSET_DATA_PREFIX_BYTES, offsetBytes, lengthBytes,
      (target) => writeOffsetDataPrefix(target, request.cookie, offsetBytes, lengthBytes, true));
  }

  /**
   * A read reply of `prefixBytes` of header (written by `writeHeader`) and the
   * data: by sendfile when the range is large and the device lends it as a
   * file range, else read into a buffer behind the header.
   */
  private sendReadData(prefixBytes: number, offsetBytes: number, lengthBytes: number,
    writeHeader: (target: Buffer) => void): Promise<void> {
    if (lengthBytes >= this.options.fileReplyBytesMin && this.device.lendFileRange !== undefined) {
      return this.sendReadFromFileOrBuffer(prefixBytes, offsetBytes, lengthBytes, writeHeader);
    }
    return this.sendReadFromBuffer(prefixBytes, offsetBytes, lengthBytes, writeHeader);
  }

  private async sendReadFromFileOrBuffer(prefixBytes: number, offsetBytes: number, lengthBytes: number,
    writeHeader: (target: Buffer) => void): Promise<void> {
    if (await this.sendReadFromFile(prefixBytes, offsetBytes, lengthBytes, writeHeader)) return;
    await this.sendReadFromBuffer(prefixBytes, offsetBytes, lengthBytes, writeHeader);
  }

  /** false: not sent (not lent, or declined); read it instead. */
  private async sendReadFromFile(prefixBytes: number, offsetBytes: number, lengthBytes: number,
    writeHeader: (target: Buffer) => void): Promise<boolean> {
    if (!this.writer.canSendFiles) return false;
    const lease = this.device.lendFileRange!(offsetBytes, lengthBytes);
    if (lease === undefined) return false;
    const header = Buffer.allocUnsafe(prefixBytes);
    writeHeader(header);
    try {
      return await this.writer.sendFile({ header, fd: lease.fd, positionBytes: lease.positionBytes, lengthBytes });
    } finally {
      lease.release();
    }
  }

  /** Reads into a pooled reply buffer behind room for the reply header, so the reply is one write. */
  private sendReadFromBuffer(prefixBytes: number, offsetBytes: number, lengthBytes: number,
    writeHeader: (target: Buffer) => void): Promise<void> {
    const reply = this.options.bufferPool.acquire(prefixBytes + lengthBytes);
    let reading: Promise<void>;
    try {
      reading = this.device.read(offsetBytes, reply.buffer.subarray(prefixBytes));
    } catch (error) {
      reading = Promise.reject(error);
    }
    if (reading === finishedNow) {
      this.sendFilledReply(reply, writeHeader);
      return finishedNow;
    }
    return reading.then(() => this.sendFilledReply(reply, writeHeader), (error: unknown) => {
      reply.release();
      throw error;
    });
  }

  private sendFilledReply(reply: PooledBuffer, writeHeader: (target: Buffer) => void): void {
    writeHeader(reply.buffer);
    this.writer.send(reply.buffer, reply.release);
  }

  private async serveSparseRead(request: RequestHeader, offsetBytes: number, extents: Extent[]): Promise<void> {
    const endBytes = offsetBytes + request.lengthBytes;
    const chunks: Buffer[] = [];
    let position = offsetBytes;
    for (const extent of extents) {
      if (position >= endBytes) break;
      const extentEnd = Math.min(extent.offsetBytes + extent.lengthBytes, endBytes);
      if (extentEnd <= position) continue;
      chunks.push(await this.readChunk(request.cookie, position, extentEnd - position, extent.zero));
      position = extentEnd;
    }
    // Block status may cover only a prefix; the rest is sent as data.
    if (position < endBytes) chunks.push(await this.readChunk(request.cookie, position, endBytes - position, false));
    for (const chunk of chunks) this.writer.send(chunk);
    this.writer.send(structuredNone(request.cookie));
  }

  private async readChunk(cookie: bigint, offsetBytes: number, lengthBytes: number, zero: boolean): Promise<Buffer> {
    if (zero) return offsetHoleChunk(cookie, offsetBytes, lengthBytes, false);
    const chunk = Buffer.allocUnsafe(OFFSET_DATA_PREFIX_BYTES + lengthBytes);
    await this.device.read(offsetBytes, chunk.subarray(OFFSET_DATA_PREFIX_BYTES));
    writeOffsetDataPrefix(chunk, cookie, offsetBytes, lengthBytes, false);
    return chunk;
  }
}
