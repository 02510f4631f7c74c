import type { BlockDevice } from '../blockdev/types.js';
import {
  BASE_ALLOCATION, BASE_ALLOCATION_ID, ClientFlag, DIRTY_BITMAP_PREFIX, Info, Limits, Option, OptionReply, TransmissionFlag,
} from './constants.js';
import { optionReply } from './replies.js';
import type { TlsMode } from './tls-credentials.js';

/** Checkpoints' changed blocks an export offers as qemu:dirty-bitmap:NAME contexts (cbt/checkpoint-store.ts). */
export interface DirtyBitmapSource {
  names(): string[];
  /** Runs covering the range (only the first with `one`), or undefined when the checkpoint no longer exists. */
  runs(name: string, offsetBytes: number, lengthBytes: number, one: boolean): Array<{ lengthBytes: number; dirty: boolean }> | undefined;
}

/** What a client can attach to. The device is captured at GO time (a generation). */
export interface ExportEntry {
  name: string;
  description: string;
  device: BlockDevice;
  readOnly: boolean;
  dirtyBitmaps?: DirtyBitmapSource;
}

/** A metadata context chosen with SET_META_CONTEXT, by its id on this connection. */
export interface MetaContext {
  id: number;
  name: string;
}

export interface ExportTable {
  /** Looks an export up by name; "" means the default export. */
  find(name: string): ExportEntry | undefined;
  list(): ExportEntry[];
}

/** Option-phase state of one connection. */
export interface Negotiation {
  clientFlags: number;
  structuredReplies: boolean;
  /** The export SET_META_CONTEXT chose contexts for (undefined: none chosen). */
  metaContextExport: string | undefined;
  /** The contexts chosen for it, with their ids on this connection. */
  metaContexts: MetaContext[];
  optionsSeen: number;
  /** The server's TLS mode, fixed for the connection's life (the spec requires one mode per connection). */
  tls: TlsMode;
  /** STARTTLS succeeded: everything negotiated before it was forgotten. */
  tlsActive: boolean;
}

export type OptionOutcome =
  | { next: 'options'; replies: Buffer[] }
  | { next: 'transmission'; replies: Buffer[]; entry: ExportEntry; flags: number }
  | { next: 'close'; replies: Buffer[]; reason: string }
  /** The ACK is in `replies`; the connection starts the TLS handshake once it is sent. */
  | { next: 'starttls'; replies: Buffer[] };

/** Minimum, preferred and maximum block sizes we advertise (NBD_INFO_BLOCK_SIZE). */
export const advertisedBlockSizes = { minimum: 1, preferred: 4096, maximum: Limits.payloadBytesMax } as const;

export function newNegotiation(clientFlags: number, tls: TlsMode = 'off'): Negotiation {
  return { clientFlags, structuredReplies: false, metaContextExport: undefined, metaContexts: [], optionsSeen: 0, tls, tlsActive: false };
}

/** After the TLS handshake, negotiation starts over: nothing said in plaintext carries into the session. */
export function negotiationAfterTls(before: Negotiation): Negotiation {
  return { ...newNegotiation(before.clientFlags, before.tls), optionsSeen: before.optionsSeen, tlsActive: true };
}

/** Options this server implements; any other is answered ERR_UNSUP (after TLS, under require). */
const knownOptions: ReadonlySet<number> = new Set([Option.EXPORT_NAME, Option.ABORT, Option.LIST, Option.STARTTLS,
  Option.INFO, Option.GO, Option.STRUCTURED_REPLY, Option.LIST_META_CONTEXT, Option.SET_META_CONTEXT]);

/**
 * The answer to an option whose data is not read (too long to buffer): the
 * same one it would get read, where that does not depend on the data.
 */
export function answerUnreadOption(state: Negotiation, option: number, lengthBytes: number, shuttingDown: boolean,
): { reply: Buffer } | { disconnect: string } {
  if (option === Option.EXPORT_NAME) return { disconnect: `NBD_OPT_EXPORT_NAME of ${lengthBytes} bytes` };
  if (shuttingDown && option !== Option.ABORT) return { reply: errorReply(option, OptionReply.ERR_SHUTDOWN, 'server is shutting down') };
  if (option === Option.ABORT) return { disconnect: 'client sent NBD_OPT_ABORT (with data)' };
  if (tlsRequiredFirst(state) && option !== Option.STARTTLS) return { reply: tlsRequired(option) };
  if (!knownOptions.has(option)) return { reply: unsupported(option) };
  return { reply: errorReply(option, OptionReply.ERR_TOO_BIG, `option length ${lengthBytes} is too large`) };
}

function tlsRequiredFirst(state: Negotiation): boolean {
  return state.tls === 'require' && !state.tlsActive;
}

function tlsRequired(option: number): Buffer {
  return errorReply(option, OptionReply.ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS first');
}

function unsupported(option: number): Buffer {
  return errorReply(option, OptionReply.ERR_UNSUP, `option ${option} is not supported by this server`);
}

/** Transmission flags for an export, as this connection negotiated it. */
export function transmissionFlags(entry: ExportEntry, structuredReplies: boolean): number {
  const caps = entry.device.capabilities;
  let flags = TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_CACHE;
  if (structuredReplies) flags |= TransmissionFlag.SEND_DF;
  if (caps.multiConn) flags |= TransmissionFlag.CAN_MULTI_CONN;
  if (caps.rotational) flags |= TransmissionFlag.ROTATIONAL;
  if (entry.readOnly || caps.readOnly) return flags | TransmissionFlag.READ_ONLY;
  if (caps.flush) flags |= TransmissionFlag.SEND_FLUSH;
  if (caps.fua) flags |= TransmissionFlag.SEND_FUA;
  if (caps.trim) flags |= TransmissionFlag.SEND_TRIM;
  if (caps.writeZeroes) flags |= TransmissionFlag.SEND_WRITE_ZEROES;
  if (caps.writeZeroes && caps.fastZero) flags |= TransmissionFlag.SEND_FAST_ZERO;
  return flags;
}

const invalid = (option: number, message: string): OptionOutcome => ({
  next: 'options', replies: [errorReply(option, OptionReply.ERR_INVALID, message)],
});

function errorReply(option: number, type: number, message: string): Buffer {
  return optionReply(option, type, Buffer.from(message.slice(0, 256), 'utf8'));
}

/** Reads a spec string: at most 4096 bytes, valid UTF-8, no NUL. */
function readString(bytes: Buffer, what: string): string | { error: string } {
  if (bytes.length > Limits.stringBytesMax) return { error: `${what} is ${bytes.length} bytes, over the limit of 4096` };
  if (bytes.includes(0)) return { error: `${what} contains a NUL byte` };
  const text = bytes.toString('utf8');
  if (!Buffer.from(text, 'utf8').equals(bytes)) return { error: `${what} is not valid UTF-8` };
  return text;
}

export function handleOption(
  state: Negotiation, exports: ExportTable, option: number, payload: Buffer, shuttingDown: boolean,
): OptionOutcome {
  state.optionsSeen += 1;
  if (shuttingDown && option !== Option.ABORT) {
    if (option === Option.EXPORT_NAME) return { next: 'close', replies: [], reason: 'server is shutting down' };
    return { next: 'options', replies: [errorReply(option, OptionReply.ERR_SHUTDOWN, 'server is shutting down')] };
  }
  if (option === Option.STARTTLS) return startTls(state, payload);
  if (tlsRequiredFirst(state) && option !== Option.ABORT) {
    // EXPORT_NAME cannot carry an error: the spec says to end the session.
    if (option === Option.EXPORT_NAME) return { next: 'close', replies: [], reason: 'NBD_OPT_EXPORT_NAME before TLS; this server requires TLS' };
    return { next: 'options', replies: [tlsRequired(option)] };
  }
  switch (option) {
    case Option.EXPORT_NAME: return exportName(state, exports, payload);
    case Option.ABORT:
      return { next: 'close', replies: [optionReply(option, OptionReply.ACK)], reason: 'client sent NBD_OPT_ABORT' };
    case Option.LIST: return list(exports, payload);
    case Option.INFO:
    case Option.GO: return infoOrGo(state, exports, option, payload);
    case Option.STRUCTURED_REPLY:
      if (payload.length !== 0) return invalid(option, 'NBD_OPT_STRUCTURED_REPLY takes no payload');
      if (state.structuredReplies) return invalid(option, 'structured replies are already negotiated');
      state.structuredReplies = true;
      return { next: 'options', replies: [optionReply(option, OptionReply.ACK)] };
    case Option.LIST_META_CONTEXT:
    case Option.SET_META_CONTEXT: return metaContext(state, exports, option, payload);
    default:
      // EXTENDED_HEADERS lands here too: libnbd asks, hears ERR_UNSUP, and goes on.
      return { next: 'options', replies: [unsupported(option)] };
  }
}

function startTls(state: Negotiation, payload: Buffer): OptionOutcome {
  // The spec allows ERR_POLICY or ERR_UNSUP here; UNSUP is what a server without TLS says, and clients that allow TLS go on in plaintext.
  if (state.tls === 'off') {
    return { next: 'options', replies: [errorReply(Option.STARTTLS, OptionReply.ERR_UNSUP, 'TLS is off on this server (tls.mode)')] };
  }
  if (state.tlsActive) return invalid(Option.STARTTLS, 'TLS is already negotiated on this connection');
  if (payload.length !== 0) return invalid(Option.STARTTLS, 'NBD_OPT_STARTTLS takes no payload');
  return { next: 'starttls', replies: [optionReply(Option.STARTTLS, OptionReply.ACK)] };
}

function exportName(state: Negotiation, exports: ExportTable, payload: Buffer): OptionOutcome {
  const name = readString(payload, 'export name');
  const entry = typeof name === 'string' ? exports.find(name) : undefined;
  if (entry === undefined) {
    // EXPORT_NAME cannot carry an error: the spec says to end the session.
    const reason = typeof name === 'string' ? `unknown export "${name.slice(0, 64)}"` : name.error;
    return { next: 'close', replies: [], reason: `NBD_OPT_EXPORT_NAME: ${reason}` };
  }
  const flags = transmissionFlags(entry, state.structuredReplies);
  const noZeroes = (state.clientFlags & ClientFlag.NO_ZEROES) !== 0;
  const reply = Buffer.alloc(10 + (noZeroes ? 0 : 124));
  reply.writeBigUInt64BE(BigInt(entry.device.sizeBytes), 0);
  reply.writeUInt16BE(flags, 8);
  return { next: 'transmission', replies: [reply], entry, flags };
}

function list(exports: ExportTable, payload: Buffer): OptionOutcome {
  if (payload.length !== 0) return invalid(Option.LIST, 'NBD_OPT_LIST takes no payload');
  const replies = exports.list().map((entry) => {
    const name = Buffer.from(entry.name, 'utf8');
    const description = Buffer.from(entry.description, 'utf8');
    const body = Buffer.allocUnsafe(4 + name.length + description.length);
    body.writeUInt32BE(name.length, 0);
    name.copy(body, 4);
    description.copy(body, 4 + name.length);
    return optionReply(Option.LIST, OptionReply.SERVER, body);
  });
  replies.push(optionReply(Option.LIST, OptionReply.ACK));
  return { next: 'options', replies };
}

function infoOrGo(state: Negotiation, exports: ExportTable, option: number, payload: Buffer): OptionOutcome {
  const what = option === Option.GO ? 'NBD_OPT_GO' : 'NBD_OPT_INFO';
  if (payload.length < 6) return invalid(option, `${what}: payload of ${payload.length} bytes is too short`);
  const nameBytes = payload.readUInt32BE(0);
  if (nameBytes > payload.length - 6) {
    return invalid(option, `${what}: name length ${nameBytes} exceeds the option length ${payload.length}`);
  }
  const name = readString(payload.subarray(4, 4 + nameBytes), 'export name');
  if (typeof name !== 'string') return invalid(option, `${what}: ${name.error}`);
  const requestCount = payload.readUInt16BE(4 + nameBytes);
  if (payload.length !== 6 + nameBytes + 2 * requestCount) {
    return invalid(option, `${what}: ${requestCount} information requests do not match the option length`);
  }
  const requested = new Set<number>();
  for (let i = 0; i < requestCount; i += 1) requested.add(payload.readUInt16BE(6 + nameBytes + 2 * i));
  const entry = exports.find(name);
  if (entry === undefined) {
    return {
      next: 'options',
      replies: [errorReply(option, OptionReply.ERR_UNKNOWN, `unknown export "${name.slice(0, 64)}"`)],
    };
  }
  const flags = transmissionFlags(entry, state.structuredReplies);
  const replies: Buffer[] = [];
  const info = Buffer.allocUnsafe(12);
  info.writeUInt16BE(Info.EXPORT, 0);
  info.writeBigUInt64BE(BigInt(entry.device.sizeBytes), 2);
  info.writeUInt16BE(flags, 10);
  replies.push(optionReply(option, OptionReply.INFO, info));
  if (requested.has(Info.NAME)) replies.push(optionReply(option, OptionReply.INFO, infoString(Info.NAME, entry.name)));
  if (requested.has(Info.DESCRIPTION) && entry.description !== '') {
    replies.push(optionReply(option, OptionReply.INFO, infoString(Info.DESCRIPTION, entry.description)));
  }
  // Sent even when not requested, as qemu-nbd does: clients ignore infos they did not ask for.
  const sizes = Buffer.allocUnsafe(14);
  sizes.writeUInt16BE(Info.BLOCK_SIZE, 0);
  sizes.writeUInt32BE(advertisedBlockSizes.minimum, 2);
  sizes.writeUInt32BE(advertisedBlockSizes.preferred, 6);
  sizes.writeUInt32BE(advertisedBlockSizes.maximum, 10);
  replies.push(optionReply(option, OptionReply.INFO, sizes));
  replies.push(optionReply(option, OptionReply.ACK));
  if (option === Option.INFO) return { next: 'options', replies };
  if (state.metaContextExport !== undefined && state.metaContextExport !== name) {
    state.metaContextExport = undefined;
    state.metaContexts = [];
  }
  return { next: 'transmission', replies, entry, flags };
}

function infoString(type: number, text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const body = Buffer.allocUnsafe(2 + bytes.length);
  body.writeUInt16BE(type, 0);
  bytes.copy(body, 2);
  return body;
}

function metaContext(state: Negotiation, exports: ExportTable, option: number, payload: Buffer): OptionOutcome {
  const what = option === Option.SET_META_CONTEXT ? 'NBD_OPT_SET_META_CONTEXT' : 'NBD_OPT_LIST_META_CONTEXT';
  if (!state.structuredReplies) return invalid(option, `${what} needs structured replies negotiated first`);
  if (payload.length < 8) return invalid(option, `${what}: payload of ${payload.length} bytes is too short`);
  const nameBytes = payload.readUInt32BE(0);
  if (nameBytes > payload.length - 8) return invalid(option, `${what}: export name length ${nameBytes} is too large`);
  const name = readString(payload.subarray(4, 4 + nameBytes), 'export name');
  if (typeof name !== 'string') return invalid(option, `${what}: ${name.error}`);
  const queryCount = payload.readUInt32BE(4 + nameBytes);
  // Each query takes at least its 4-byte length: a count the option cannot hold is malformed, not merely many.
  if (queryCount > (payload.length - 8 - nameBytes) / 4) {
    return invalid(option, `${what}: ${queryCount} queries cannot fit in the option's ${payload.length} bytes`);
  }
  if (queryCount > Limits.metaQueriesMax) {
    return { next: 'options', replies: [errorReply(option, OptionReply.ERR_TOO_BIG, `${what}: too many queries`)] };
  }
  const queries: string[] = [];
  let at = 8 + nameBytes;
  for (let i = 0; i < queryCount; i += 1) {
    if (at + 4 > payload.length) return invalid(option, `${what}: query ${i} is truncated`);
    const queryBytes = payload.readUInt32BE(at);
    if (queryBytes > payload.length - at - 4) return invalid(option, `${what}: query ${i} length ${queryBytes} is too large`);
    const query = readString(payload.subarray(at + 4, at + 4 + queryBytes), `query ${i}`);
    if (typeof query !== 'string') return invalid(option, `${what}: ${query.error}`);
    queries.push(query);
    at += 4 + queryBytes;
  }
  if (at !== payload.length) return invalid(option, `${what}: ${payload.length - at} trailing bytes after the queries`);
  const entry = exports.find(name);
  if (entry === undefined) {
    return { next: 'options', replies: [errorReply(option, OptionReply.ERR_UNKNOWN, `unknown export "${name.slice(0, 64)}"`)] };
  }
  const bitmaps = (entry.dirtyBitmaps?.names() ?? []).map((checkpoint) => `${DIRTY_BITMAP_PREFIX}${checkpoint}`);
  const listing = option === Option.LIST_META_CONTEXT;
  // Exact names select; LIST also takes a namespace ("base:", "qemu:", "qemu:dirty-bitmap:") or no query for all.
  const wanted = (context: string): boolean => queries.some((query) => query === context) || (listing && (queries.length === 0 ||
    queries.some((query) => (query === 'base:' && context === BASE_ALLOCATION) ||
      ((query === 'qemu:' || query === DIRTY_BITMAP_PREFIX) && context.startsWith(DIRTY_BITMAP_PREFIX)))));
  const chosen = [BASE_ALLOCATION, ...bitmaps].filter(wanted);
  let nextId = BASE_ALLOCATION_ID + 1;
  const contexts: MetaContext[] = chosen.map((context) => ({ id: context === BASE_ALLOCATION ? BASE_ALLOCATION_ID : nextId++, name: context }));
  const replies: Buffer[] = contexts.map((context) => {
    const contextName = Buffer.from(context.name, 'utf8');
    const body = Buffer.allocUnsafe(4 + contextName.length);
    body.writeUInt32BE(listing ? 0 : context.id, 0);
    contextName.copy(body, 4);
    return optionReply(option, OptionReply.META_CONTEXT, body);
  });
  if (!listing) {
    state.metaContextExport = contexts.length > 0 ? name : undefined;
    state.metaContexts = contexts;
  }
  replies.push(optionReply(option, OptionReply.ACK));
  return { next: 'options', replies };
}
