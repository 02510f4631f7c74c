import type { ExecutionContext } from 'ava';
import net from 'node:net';
import {
  IHAVEOPT, Info, NBDMAGIC, Option, OPTION_REPLY_MAGIC, OptionReply, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
  TransmissionFlag,
} from '../../nbd/constants.js';

/** One request as the scripted server received it. */
export interface ReceivedRequest {
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
  payload: Buffer | undefined;
  /** Which connection it came on, counted from 0 in the order they were accepted. */
  connection: number;
}

/** What the scripted server does; every field has a well-behaved default. */
export interface Script {
  /** The 16 bytes after NBDMAGIC and the handshake flags (default IHAVEOPT, fixed newstyle + no zeroes). */
  greeting?: Buffer;
  sizeBytes?: number;
  transmissionFlags?: number;
  /** Answer GO with ERR_UNSUP (the client must fall back to EXPORT_NAME). */
  noGo?: boolean;
  /** GO's answer for an export it does not know (the default accepts any name). */
  goError?: number;
  /** Block-size info sent with GO: [minimum, preferred, maximum]. */
  blockSizes?: [number, number, number];
  structuredReplies?: boolean;
  /** The size offered on the connection accepted `index`-th (from 0), where it differs from sizeBytes. */
  sizeOnConnection?(index: number): number;
  /** Answers a request; the default keeps bytes in memory and replies simply. */
  answer?(request: ReceivedRequest, socket: net.Socket, memory: Buffer): void;
}

export function simpleReply(socket: net.Socket, cookie: bigint, error = 0, data?: Buffer): void {
  const header = Buffer.alloc(16);
  header.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  header.writeUInt32BE(error, 4);
  header.writeBigUInt64BE(cookie, 8);
  socket.write(data && error === 0 ? Buffer.concat([header, data]) : header);
}

export function chunk(socket: net.Socket, cookie: bigint, type: number, flags: number, payload: Buffer): void {
  const header = Buffer.alloc(20);
  header.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  header.writeUInt16BE(flags, 4);
  header.writeUInt16BE(type, 6);
  header.writeBigUInt64BE(cookie, 8);
  header.writeUInt32BE(payload.length, 16);
  socket.write(Buffer.concat([header, payload]));
}

function optionReply(socket: net.Socket, option: number, type: number, data: Buffer = Buffer.alloc(0)): void {
  const header = Buffer.alloc(20);
  header.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  header.writeUInt32BE(option, 8);
  header.writeUInt32BE(type, 12);
  header.writeUInt32BE(data.length, 16);
  socket.write(Buffer.concat([header, data]));
}

/**
 * An NBD server on 127.0.0.1 whose every answer a test can script, to show
 * how the remote leg meets servers that lack something or break the rules.
 */
export interface ScriptedServer {
  uri: string;
  requests: ReceivedRequest[];
  /** Connections accepted so far, and those still open. */
  accepted(): number;
  open(): number;
}

export async function startScriptedServer(t: ExecutionContext, script: Script): Promise<ScriptedServer> {
  const sizeBytes = script.sizeBytes ?? 1024 * 1024;
  const memory = Buffer.alloc(sizeBytes);
  const requests: ReceivedRequest[] = [];
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  const server = net.createServer((socket) => {
    const connection = accepted++;
    const offeredBytes = script.sizeOnConnection?.(connection) ?? sizeBytes;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    const greeting = Buffer.alloc(18);
    greeting.writeBigUInt64BE(NBDMAGIC, 0);
    if (script.greeting) script.greeting.copy(greeting, 8);
    else {
      greeting.writeBigUInt64BE(IHAVEOPT, 8);
      greeting.writeUInt16BE(3, 16);
    }
    socket.write(greeting);
    let buffered: Buffer = Buffer.alloc(0);
    let phase: 'flags' | 'options' | 'transmission' = 'flags';
    const flags = (script.transmissionFlags ?? (TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH | TransmissionFlag.SEND_FUA
      | TransmissionFlag.SEND_TRIM | TransmissionFlag.SEND_WRITE_ZEROES));
    const exportInfo = (): Buffer => {
      const info = Buffer.alloc(12);
      info.writeUInt16BE(Info.EXPORT, 0);
      info.writeBigUInt64BE(BigInt(offeredBytes), 2);
      info.writeUInt16BE(flags, 10);
      return info;
    };
    socket.on('data', (data: Buffer) => {
      buffered = Buffer.concat([buffered, data]);
      for (;;) {
        if (phase === 'flags') {
          if (buffered.length < 4) return;
          buffered = buffered.subarray(4);
          phase = 'options';
          continue;
        }
        if (phase === 'options') {
          if (buffered.length < 16) return;
          const length = buffered.readUInt32BE(12);
          if (buffered.length < 16 + length) return;
          const option = buffered.readUInt32BE(8);
          buffered = buffered.subarray(16 + length);
          if (option === Option.STRUCTURED_REPLY) {
            optionReply(socket, option, script.structuredReplies === false ? OptionReply.ERR_UNSUP : OptionReply.ACK);
          } else if (option === Option.GO) {
            if (script.noGo) optionReply(socket, option, OptionReply.ERR_UNSUP);
            else if (script.goError !== undefined) optionReply(socket, option, script.goError);
            else {
              optionReply(socket, option, OptionReply.INFO, exportInfo());
              if (script.blockSizes) {
                const sizes = Buffer.alloc(14);
                sizes.writeUInt16BE(Info.BLOCK_SIZE, 0);
                script.blockSizes.forEach((value, index) => sizes.writeUInt32BE(value, 2 + index * 4));
                optionReply(socket, option, OptionReply.INFO, sizes);
              }
              optionReply(socket, option, OptionReply.ACK);
              phase = 'transmission';
            }
          } else if (option === Option.EXPORT_NAME) {
            const reply = Buffer.alloc(10);
            reply.writeBigUInt64BE(BigInt(offeredBytes), 0);
            reply.writeUInt16BE(flags, 8);
            socket.write(reply);
            phase = 'transmission';
          } else {
            optionReply(socket, option, OptionReply.ERR_UNSUP);
          }
          continue;
        }
        if (buffered.length < 28) return;
        if (buffered.readUInt32BE(0) !== REQUEST_MAGIC) { socket.destroy(); return; }
        const request: ReceivedRequest = {
          flags: buffered.readUInt16BE(4), type: buffered.readUInt16BE(6), cookie: buffered.readBigUInt64BE(8),
          offset: Number(buffered.readBigUInt64BE(16)), length: buffered.readUInt32BE(24), payload: undefined, connection,
        };
        const payloadBytes = request.type === 1 ? request.length : 0;
        if (buffered.length < 28 + payloadBytes) return;
        if (payloadBytes > 0) request.payload = Buffer.from(buffered.subarray(28, 28 + payloadBytes));
        buffered = buffered.subarray(28 + payloadBytes);
        requests.push(request);
        if (request.type === 2) { socket.end(); return; }
        if (script.answer) script.answer(request, socket, memory);
        else defaultAnswer(request, socket, memory);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    for (const socket of sockets) socket.destroy();
    server.close(() => resolve());
  }));
  return { uri: `nbd://127.0.0.1:${(server.address() as net.AddressInfo).port}/disk`, requests, accepted: () => accepted, open: () => sockets.size };
}

export function defaultAnswer(request: ReceivedRequest, socket: net.Socket, memory: Buffer): void {
  if (request.type === 0) simpleReply(socket, request.cookie, 0, memory.subarray(request.offset, request.offset + request.length));
  else if (request.type === 1) {
    request.payload!.copy(memory, request.offset);
    simpleReply(socket, request.cookie);
  } else if (request.type === 4 || request.type === 6) {
    memory.fill(0, request.offset, request.offset + request.length);
    simpleReply(socket, request.cookie);
  } else simpleReply(socket, request.cookie);
}
