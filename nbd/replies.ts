import {
  OPTION_REPLY_MAGIC, ReplyFlag, ReplyType, SIMPLE_REPLY_MAGIC, SIMPLE_REPLY_HEADER_BYTES,
  STRUCTURED_REPLY_HEADER_BYTES, STRUCTURED_REPLY_MAGIC,
} from './constants.js';

/** Encoders for everything the server sends. Each returns one buffer so a reply is one socket write. */

export function optionReply(option: number, type: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const reply = Buffer.allocUnsafe(20 + payload.length);
  reply.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  reply.writeUInt32BE(option, 8);
  reply.writeUInt32BE(type >>> 0, 12);
  reply.writeUInt32BE(payload.length, 16);
  payload.copy(reply, 20);
  return reply;
}

export function writeSimpleHeader(target: Buffer, errorCode: number, cookie: bigint): void {
  target.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  target.writeUInt32BE(errorCode, 4);
  target.writeBigUInt64BE(cookie, 8);
}

export function simpleReply(errorCode: number, cookie: bigint): Buffer {
  const reply = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_BYTES);
  writeSimpleHeader(reply, errorCode, cookie);
  return reply;
}

export function writeStructuredHeader(
  target: Buffer, at: number, flags: number, type: number, cookie: bigint, lengthBytes: number,
): void {
  target.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at);
  target.writeUInt16BE(flags, at + 4);
  target.writeUInt16BE(type, at + 6);
  target.writeBigUInt64BE(cookie, at + 8);
  target.writeUInt32BE(lengthBytes, at + 16);
}

export function structuredNone(cookie: bigint): Buffer {
  const reply = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES);
  writeStructuredHeader(reply, 0, ReplyFlag.DONE, ReplyType.NONE, cookie, 0);
  return reply;
}

/** An ERROR chunk; the message is cut to keep the chunk small and within the spec's string limit. */
export function structuredError(cookie: bigint, errorCode: number, message: string): Buffer {
  const text = Buffer.from(message.slice(0, 200), 'utf8');
  const reply = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + 6 + text.length);
  writeStructuredHeader(reply, 0, ReplyFlag.DONE, ReplyType.ERROR, cookie, 6 + text.length);
  reply.writeUInt32BE(errorCode, 20);
  reply.writeUInt16BE(text.length, 24);
  text.copy(reply, 26);
  return reply;
}

export function offsetHoleChunk(cookie: bigint, offsetBytes: number, lengthBytes: number, done: boolean): Buffer {
  const chunk = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + 12);
  writeStructuredHeader(chunk, 0, done ? ReplyFlag.DONE : 0, ReplyType.OFFSET_HOLE, cookie, 12);
  chunk.writeBigUInt64BE(BigInt(offsetBytes), 20);
  chunk.writeUInt32BE(lengthBytes, 28);
  return chunk;
}

/** Header plus the offset field of an OFFSET_DATA chunk, written in front of the data. */
export const OFFSET_DATA_PREFIX_BYTES = STRUCTURED_REPLY_HEADER_BYTES + 8;

export function writeOffsetDataPrefix(
  target: Buffer, cookie: bigint, offsetBytes: number, dataBytes: number, done: boolean,
): void {
  writeStructuredHeader(target, 0, done ? ReplyFlag.DONE : 0, ReplyType.OFFSET_DATA, cookie, 8 + dataBytes);
  target.writeBigUInt64BE(BigInt(offsetBytes), 20);
}

export function blockStatusChunk(
  cookie: bigint, contextId: number, descriptors: Array<{ lengthBytes: number; flags: number }>, done = true,
): Buffer {
  const payloadBytes = 4 + 8 * descriptors.length;
  const chunk = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + payloadBytes);
  writeStructuredHeader(chunk, 0, done ? ReplyFlag.DONE : 0, ReplyType.BLOCK_STATUS, cookie, payloadBytes);
  chunk.writeUInt32BE(contextId, 20);
  let at = 24;
  for (const descriptor of descriptors) {
    chunk.writeUInt32BE(descriptor.lengthBytes, at);
    chunk.writeUInt32BE(descriptor.flags, at + 4);
    at += 8;
  }
  return chunk;
}
