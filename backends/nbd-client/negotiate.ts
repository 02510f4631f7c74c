import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import {
  BASE_ALLOCATION, ClientFlag, HandshakeFlag, IHAVEOPT, Info, NBDMAGIC, Option, OPTION_REPLY_MAGIC, OptionReply,
  TransmissionFlag,
} from '../../nbd/constants.js';
import { HandshakeReader } from './handshake-reader.js';
import type { NbdAddress } from './nbd-uri.js';

/** What the remote export offers, as negotiated. */
export interface RemoteExport {
  socket: net.Socket;
  /** Bytes that arrived after negotiation (none from a correct server). */
  leftover: Buffer;
  sizeBytes: number;
  flags: number;
  structuredReplies: boolean;
  /** Set when base:allocation was negotiated. */
  baseAllocationId: number | undefined;
  /** Every metadata context the server chose, by name (base:allocation and any asked for with extraContexts). */
  contextIds: Map<string, number>;
  minimumBlockBytes: number;
  preferredBlockBytes: number;
  maximumBlockBytes: number;
}

/** A negotiation the server refused, or a server we cannot use; the message says which and why. */
export class NegotiationError extends Error {
  constructor(readonly uri: string, problem: string) {
    super(`${uri}: ${problem}`);
    this.name = 'NegotiationError';
  }
}

const OLDSTYLE_MAGIC = 0x00420281861253n;
/** The spec's default when the server sends no block-size info: 512-byte minimum, 32 MiB maximum is what qemu assumes. */
const defaultMaximumBlockBytes = 32 * 1024 * 1024;

interface OptionReplyFrame {
  type: number;
  data: Buffer;
}

const errorNames = new Map(Object.entries(OptionReply).filter(([, value]) => value >= 0x80000000).map(([name, value]) => [value, name]));

/**
 * Fixed newstyle negotiation as a client: STARTTLS first for nbds (never a
 * plaintext fallback), structured replies, base:allocation, then GO asking
 * for block-size constraints, which promises the server we honour them.
 * A server without GO gets EXPORT_NAME, as libnbd does.
 */
export async function negotiate(address: NbdAddress, tlsOptions: tls.ConnectionOptions | undefined,
  options: { connectTimeoutMs: number; /** More metadata contexts to ask for (qemu:dirty-bitmap:NAME). */ extraContexts?: string[] }):
  Promise<RemoteExport> {
  let socket = await connectSocket(address, options.connectTimeoutMs);
  /** From STARTTLS on: a reset or close then is most likely the server refusing our credentials. */
  let inTls = false;
  const deadline = setTimeout(() => socket.destroy(new Error(`negotiation took longer than ${options.connectTimeoutMs} ms`)),
    options.connectTimeoutMs);
  try {
    let reader = new HandshakeReader(socket);
    const fail = (problem: string): never => { throw new NegotiationError(address.uri, problem); };
    const greeting = await reader.read(18);
    if (greeting.readBigUInt64BE(0) !== NBDMAGIC) fail('is not an NBD server (no NBDMAGIC in its greeting)');
    if (greeting.readBigUInt64BE(8) === OLDSTYLE_MAGIC) fail('speaks the oldstyle protocol, which has no export names or options; use a newstyle server');
    if (greeting.readBigUInt64BE(8) !== IHAVEOPT) fail('sent an unknown handshake magic');
    const serverFlags = greeting.readUInt16BE(16);
    if ((serverFlags & HandshakeFlag.FIXED_NEWSTYLE) === 0) fail('does not speak fixed newstyle negotiation');
    const noZeroes = (serverFlags & HandshakeFlag.NO_ZEROES) !== 0;
    const clientFlags = Buffer.alloc(4);
    clientFlags.writeUInt32BE(ClientFlag.FIXED_NEWSTYLE | (noZeroes ? ClientFlag.NO_ZEROES : 0));
    socket.write(clientFlags);

    const ask = async (option: number, data: Buffer = Buffer.alloc(0)): Promise<OptionReplyFrame> => {
      sendOption(socket, option, data);
      return readOptionReply(reader, option, fail);
    };
    const refusal = (reply: OptionReplyFrame, what: string): string => {
      const message = reply.data.length > 0 ? `: ${reply.data.toString('utf8')}` : '';
      if (reply.type === OptionReply.ERR_TLS_REQD) return `requires TLS for ${what}; use nbds:// with credentials`;
      return `refused ${what} (${errorNames.get(reply.type) ?? `error ${reply.type}`}${message})`;
    };

    if (address.tls) {
      const reply = await ask(Option.STARTTLS);
      if (reply.type !== OptionReply.ACK) fail(`${refusal(reply, 'STARTTLS')}; nbds never falls back to plaintext`);
      reader.detach();
      inTls = true;
      socket = await startTls(socket, tlsOptions!, address);
      reader = new HandshakeReader(socket);
    }

    const structured = await ask(Option.STRUCTURED_REPLY);
    if (structured.type === OptionReply.ERR_TLS_REQD) fail(refusal(structured, 'every option'));
    const structuredReplies = structured.type === OptionReply.ACK;
    const contextIds = new Map<string, number>();
    if (structuredReplies) {
      const name = Buffer.from(address.exportName, 'utf8');
      const queries = [BASE_ALLOCATION, ...(options.extraContexts ?? [])].map((query) => Buffer.from(query, 'utf8'));
      const request = Buffer.alloc(4 + name.length + 4 + queries.reduce((sum, query) => sum + 4 + query.length, 0));
      request.writeUInt32BE(name.length, 0);
      name.copy(request, 4);
      request.writeUInt32BE(queries.length, 4 + name.length);
      let at = 8 + name.length;
      for (const query of queries) {
        request.writeUInt32BE(query.length, at);
        query.copy(request, at + 4);
        at += 4 + query.length;
      }
      sendOption(socket, Option.SET_META_CONTEXT, request);
      for (let replies = 0; replies < 64; replies += 1) {
        const reply = await readOptionReply(reader, Option.SET_META_CONTEXT, fail);
        if (reply.type === OptionReply.META_CONTEXT && reply.data.length >= 4) contextIds.set(reply.data.subarray(4).toString('utf8'), reply.data.readUInt32BE(0));
        if (reply.type !== OptionReply.META_CONTEXT) break;
      }
    }
    const baseAllocationId = contextIds.get(BASE_ALLOCATION);

    const negotiated = await go(socket, reader, address, noZeroes, fail, refusal);
    clearTimeout(deadline);
    const leftover = reader.detach();
    return { socket, leftover, structuredReplies, baseAllocationId, contextIds, ...negotiated };
  } catch (error) {
    clearTimeout(deadline);
    socket.destroy();
    const message = (error as Error).message;
    if (inTls && endedByPeer.test(message)) throw new NegotiationError(address.uri, credentialsRefused(address, message));
    if (error instanceof NegotiationError) throw error;
    throw new NegotiationError(address.uri, message);
  }
}

/** How OpenSSL and Node say the server ended the connection under us. */
const endedByPeer = /ECONNRESET|EPIPE|socket disconnected before secure TLS connection|closed the connection/;

/**
 * A server that refuses our credentials just ends the connection: with
 * TLS 1.3 a required client certificate is checked after our side of the
 * handshake is done, so the reset arrives at the first read; a PSK server
 * whose key differs cannot finish the handshake. Say what most likely
 * happened, not only "read ECONNRESET".
 */
function credentialsRefused(address: NbdAddress, message: string): string {
  const problem = message.replace(`${address.uri}: `, '').replace(/^TLS handshake failed: /, '');
  if (address.tlsPskFile !== undefined) {
    const who = address.tlsUsername ?? 'the user';
    return `TLS handshake failed: the server ended it (${problem}); most likely a key mismatch: the key for ${who} in ` +
      `${address.tlsPskFile} is not the server's, or the server has no key for ${who}`;
  }
  const dir = address.tlsCertificates ?? '';
  const hasClientCertificate = fs.existsSync(path.join(dir, 'client-cert.pem'));
  return `the server ended the connection during or right after the TLS handshake (${problem}); ` + (hasClientCertificate
    ? `it most likely does not accept our client certificate (${path.join(dir, 'client-cert.pem')}: is it signed by a CA the server trusts?)`
    : `it most likely requires a client certificate: put client-cert.pem and client-key.pem, signed by a CA the server trusts, in ${dir}`);
}

async function go(socket: net.Socket, reader: HandshakeReader, address: NbdAddress, noZeroes: boolean,
  fail: (problem: string) => never, refusal: (reply: OptionReplyFrame, what: string) => string)
  : Promise<Pick<RemoteExport, 'sizeBytes' | 'flags' | 'minimumBlockBytes' | 'preferredBlockBytes' | 'maximumBlockBytes'>> {
  const name = Buffer.from(address.exportName, 'utf8');
  const request = Buffer.alloc(4 + name.length + 2 + 2);
  request.writeUInt32BE(name.length, 0);
  name.copy(request, 4);
  request.writeUInt16BE(1, 4 + name.length);
  request.writeUInt16BE(Info.BLOCK_SIZE, 6 + name.length);
  sendOption(socket, Option.GO, request);
  let sizeBytes: number | undefined;
  let flags = 0;
  let minimumBlockBytes = 1;
  let preferredBlockBytes = 4096;
  let maximumBlockBytes = defaultMaximumBlockBytes;
  for (let replies = 0; replies < 64; replies += 1) {
    const reply = await readOptionReply(reader, Option.GO, fail);
    if (reply.type === OptionReply.INFO) {
      const info = reply.data.length >= 2 ? reply.data.readUInt16BE(0) : -1;
      if (info === Info.EXPORT && reply.data.length >= 12) {
        sizeBytes = Number(reply.data.readBigUInt64BE(2));
        flags = reply.data.readUInt16BE(10);
      } else if (info === Info.BLOCK_SIZE && reply.data.length >= 14) {
        minimumBlockBytes = reply.data.readUInt32BE(2);
        preferredBlockBytes = reply.data.readUInt32BE(6);
        maximumBlockBytes = Math.min(reply.data.readUInt32BE(10), defaultMaximumBlockBytes);
      }
      continue;
    }
    if (reply.type === OptionReply.ACK) {
      if (sizeBytes === undefined) fail('finished GO without sending the export size');
      return { sizeBytes: sizeBytes!, flags, minimumBlockBytes, preferredBlockBytes, maximumBlockBytes };
    }
    if (reply.type === OptionReply.ERR_UNSUP) return exportName(socket, reader, name, noZeroes);
    if (reply.type === OptionReply.ERR_UNKNOWN) fail(`has no export named "${address.exportName}"`);
    fail(refusal(reply, `export "${address.exportName}"`));
  }
  return fail('sent too many replies to GO');
}

/** The pre-GO way in: no block sizes, and a refusal is a closed connection. */
async function exportName(socket: net.Socket, reader: HandshakeReader, name: Buffer, noZeroes: boolean)
  : Promise<Pick<RemoteExport, 'sizeBytes' | 'flags' | 'minimumBlockBytes' | 'preferredBlockBytes' | 'maximumBlockBytes'>> {
  sendOption(socket, Option.EXPORT_NAME, name);
  const reply = await reader.read(noZeroes ? 10 : 134);
  return { sizeBytes: Number(reply.readBigUInt64BE(0)), flags: reply.readUInt16BE(8), minimumBlockBytes: 1,
    preferredBlockBytes: 4096, maximumBlockBytes: defaultMaximumBlockBytes };
}

function sendOption(socket: net.Socket, option: number, data: Buffer): void {
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(IHAVEOPT, 0);
  header.writeUInt32BE(option, 8);
  header.writeUInt32BE(data.length, 12);
  socket.write(data.length > 0 ? Buffer.concat([header, data]) : header);
}

/** Option replies are bounded so a hostile server cannot make us buffer gigabytes. */
const optionReplyBytesMax = 64 * 1024;

async function readOptionReply(reader: HandshakeReader, option: number, fail: (problem: string) => never): Promise<OptionReplyFrame> {
  const header = await reader.read(20);
  if (header.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) fail('sent an option reply without its magic');
  if (header.readUInt32BE(8) !== option) fail(`answered option ${header.readUInt32BE(8)} when ${option} was asked`);
  const type = header.readUInt32BE(12);
  const length = header.readUInt32BE(16);
  if (length > optionReplyBytesMax) fail(`sent a ${length}-byte option reply`);
  const data = length > 0 ? Buffer.from(await reader.read(length)) : Buffer.alloc(0);
  return { type, data };
}

function connectSocket(address: NbdAddress, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = address.transport.kind === 'tcp'
      ? net.connect({ host: address.transport.host, port: address.transport.port, noDelay: true })
      : net.connect({ path: address.transport.socket });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new NegotiationError(address.uri, `no connection within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(new NegotiationError(address.uri, `cannot connect: ${error.message}`));
    });
  });
}

function startTls(socket: net.Socket, options: tls.ConnectionOptions, address: NbdAddress): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const secure = tls.connect({ ...options, socket });
    const onError = (error: Error): void => {
      secure.destroy();
      reject(new NegotiationError(address.uri, `TLS handshake failed: ${error.message}`));
    };
    secure.once('error', onError);
    secure.once('secureConnect', () => {
      secure.off('error', onError);
      resolve(secure);
    });
  });
}

export function hasFlag(flags: number, flag: number): boolean {
  return (flags & TransmissionFlag.HAS_FLAGS) !== 0 && (flags & flag) !== 0;
}
