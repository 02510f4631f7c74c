import { ReplyFlag, ReplyType, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC } from '../../nbd/constants.js';

/** What the parser needs to know about the request a reply answers. */
export interface AwaitedReply {
  /** READ: the buffer the data goes into (request offset = target[0]); undefined for other commands. */
  target: Buffer | undefined;
  offsetBytes: number;
  /** A structured chunk that is not data or an error (block status) arrives whole here. */
  onChunk(type: number, payload: Buffer): void;
  /** An error chunk; more chunks may follow until the one flagged DONE. */
  onError(errno: number, message: string | undefined): void;
  /** The final reply arrived (a simple reply's errno, or 0 after the last chunk: onError said what failed). */
  onDone(errno: number): void;
}

export class ProtocolViolation extends Error {
  constructor(message: string) {
    super(`the remote server broke the protocol: ${message}`);
    this.name = 'ProtocolViolation';
  }
}

/** Non-data structured chunks beyond this are a hostile server, not a reply. */
const chunkBytesMax = 16 * 1024 * 1024;

/**
 * Parses the transmission phase's replies as they stream in, copying read
 * data straight from the socket's chunks into each request's target buffer
 * (no per-reply buffer for data). Simple and structured replies both; a
 * structured read may arrive in several chunks, in any order, with holes.
 */
export class ReplyParser {
  private header = Buffer.alloc(20);
  private headerFill = 0;
  private headerNeed = 4;
  /** The reply being received, and how many payload bytes remain. */
  private current: AwaitedReply | undefined;
  private payloadLeft = 0;
  /** For OFFSET_DATA: where the next payload byte goes in current.target. */
  private dataAt = 0;
  private chunkType = -1;
  private chunkFlags = 0;
  private chunkCookie = 0n;
  /** For chunks read whole (and OFFSET_DATA's 8-byte offset prefix). */
  private collect: Buffer | undefined;
  private collectFill = 0;

  constructor(private readonly lookup: (cookie: bigint) => AwaitedReply | undefined,
    private readonly finished: (cookie: bigint) => void) {}

  /** Feeds bytes; throws ProtocolViolation (the caller drops the connection). */
  push(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.payloadLeft > 0) {
        at = this.consumePayload(chunk, at);
        continue;
      }
      const take = Math.min(this.headerNeed - this.headerFill, chunk.length - at);
      chunk.copy(this.header, this.headerFill, at, at + take);
      this.headerFill += take;
      at += take;
      if (this.headerFill === this.headerNeed) this.headerComplete();
    }
  }

  private headerComplete(): void {
    const magic = this.header.readUInt32BE(0);
    if (this.headerNeed === 4) {
      if (magic === SIMPLE_REPLY_MAGIC) this.headerNeed = 16;
      else if (magic === STRUCTURED_REPLY_MAGIC) this.headerNeed = 20;
      else throw new ProtocolViolation(`reply magic 0x${magic.toString(16)}`);
      return;
    }
    const simple = this.headerNeed === 16;
    this.headerNeed = 4;
    this.headerFill = 0;
    if (simple) {
      const errno = this.header.readUInt32BE(4);
      const cookie = this.header.readBigUInt64BE(8);
      const request = this.requestFor(cookie);
      if (errno === 0 && request.target !== undefined && request.target.length > 0) {
        this.current = request;
        this.chunkType = -1;
        this.chunkCookie = cookie;
        this.chunkFlags = ReplyFlag.DONE;
        this.dataAt = 0;
        this.payloadLeft = request.target.length;
        return;
      }
      this.finish(cookie, request, errno);
      return;
    }
    this.chunkFlags = this.header.readUInt16BE(4);
    this.chunkType = this.header.readUInt16BE(6);
    this.chunkCookie = this.header.readBigUInt64BE(8);
    const length = this.header.readUInt32BE(16);
    const request = this.requestFor(this.chunkCookie);
    this.current = request;
    if (this.chunkType === ReplyType.OFFSET_DATA) {
      if (request.target === undefined || length < 8) throw new ProtocolViolation('OFFSET_DATA for a request that reads nothing');
      this.collect = Buffer.alloc(8);
    } else {
      if (length > chunkBytesMax) throw new ProtocolViolation(`a ${length}-byte structured chunk`);
      this.collect = Buffer.allocUnsafe(length);
    }
    this.collectFill = 0;
    this.payloadLeft = length;
    if (length === 0) this.chunkComplete();
  }

  private consumePayload(chunk: Buffer, at: number): number {
    const available = Math.min(this.payloadLeft, chunk.length - at);
    if (this.collect && this.collectFill < this.collect.length) {
      const take = Math.min(available, this.collect.length - this.collectFill);
      chunk.copy(this.collect, this.collectFill, at, at + take);
      this.collectFill += take;
      this.payloadLeft -= take;
      if (this.collectFill === this.collect.length && this.chunkType === ReplyType.OFFSET_DATA) this.startData();
      else if (this.payloadLeft === 0) this.chunkComplete();
      return at + take;
    }
    const target = this.current!.target!;
    chunk.copy(target, this.dataAt, at, at + available);
    this.dataAt += available;
    this.payloadLeft -= available;
    if (this.payloadLeft === 0) this.chunkComplete();
    return at + available;
  }

  /** OFFSET_DATA's offset is known: the rest of the chunk is data for target at that place. */
  private startData(): void {
    const request = this.current!;
    const offset = Number(this.collect!.readBigUInt64BE(0)) - request.offsetBytes;
    if (offset < 0 || offset + this.payloadLeft > request.target!.length) {
      throw new ProtocolViolation('OFFSET_DATA outside the requested range');
    }
    this.dataAt = offset;
    this.collect = undefined;
    if (this.payloadLeft === 0) this.chunkComplete();
  }

  private chunkComplete(): void {
    const request = this.current!;
    const cookie = this.chunkCookie;
    const payload = this.collect;
    this.collect = undefined;
    this.current = undefined;
    let errno = 0;
    let message: string | undefined;
    if (this.chunkType === ReplyType.OFFSET_HOLE) {
      if (request.target === undefined || payload!.length !== 12) throw new ProtocolViolation('a malformed OFFSET_HOLE');
      const offset = Number(payload!.readBigUInt64BE(0)) - request.offsetBytes;
      const length = payload!.readUInt32BE(8);
      if (offset < 0 || offset + length > request.target.length) throw new ProtocolViolation('OFFSET_HOLE outside the requested range');
      request.target.fill(0, offset, offset + length);
    } else if (this.chunkType === ReplyType.ERROR || this.chunkType === ReplyType.ERROR_OFFSET) {
      if (payload!.length < 6) throw new ProtocolViolation('an error chunk shorter than its header');
      errno = payload!.readUInt32BE(0);
      const messageBytes = payload!.readUInt16BE(4);
      message = payload!.subarray(6, 6 + messageBytes).toString('utf8') || undefined;
      if (errno === 0) throw new ProtocolViolation('an error chunk with error 0');
    } else if (this.chunkType !== ReplyType.NONE && this.chunkType !== -1 && this.chunkType !== ReplyType.OFFSET_DATA) {
      if ((this.chunkType & 0x8000) !== 0) {
        // An unknown error type still carries the error number first.
        errno = payload!.length >= 4 ? payload!.readUInt32BE(0) || 5 : 5;
      } else {
        request.onChunk(this.chunkType, payload!);
      }
    }
    if (errno !== 0) request.onError(errno, message);
    if ((this.chunkFlags & ReplyFlag.DONE) !== 0) this.finish(cookie, request, 0);
  }

  private finish(cookie: bigint, request: AwaitedReply, errno: number): void {
    this.finished(cookie);
    request.onDone(errno);
  }

  private requestFor(cookie: bigint): AwaitedReply {
    const request = this.lookup(cookie);
    if (!request) throw new ProtocolViolation(`a reply for cookie ${cookie}, which no request in flight has`);
    return request;
  }
}
