import { Command, CommandFlag, commandNames, Limits, NbdErrno, REQUEST_MAGIC, TransmissionFlag } from './constants.js';

export interface RequestHeader {
  flags: number;
  type: number;
  cookie: bigint;
  /** Exact 64-bit offset from the wire; converted to a number only after a range check. */
  offset: bigint;
  lengthBytes: number;
}

export function parseRequestHeader(header: Buffer): RequestHeader | undefined {
  if (header.readUInt32BE(0) !== REQUEST_MAGIC) return undefined;
  return {
    flags: header.readUInt16BE(4),
    type: header.readUInt16BE(6),
    cookie: header.readBigUInt64BE(8),
    offset: header.readBigUInt64BE(16),
    lengthBytes: header.readUInt32BE(24),
  };
}

export type Validation =
  | { ok: true; offsetBytes: number }
  | { ok: false; error: number; message: string };

export interface ValidationContext {
  sizeBytes: number;
  transmissionFlags: number;
  structuredReplies: boolean;
  blockStatusNegotiated: boolean;
}

const allowedFlags: Record<number, number> = {
  [Command.READ]: CommandFlag.FUA | CommandFlag.DF,
  [Command.WRITE]: CommandFlag.FUA,
  [Command.FLUSH]: CommandFlag.FUA,
  [Command.TRIM]: CommandFlag.FUA,
  [Command.CACHE]: CommandFlag.FUA,
  [Command.WRITE_ZEROES]: CommandFlag.FUA | CommandFlag.NO_HOLE | CommandFlag.FAST_ZERO,
  [Command.BLOCK_STATUS]: CommandFlag.FUA | CommandFlag.REQ_ONE,
};

const fail = (error: number, message: string): Validation => ({ ok: false, error, message });

/**
 * Checks one request against the spec's rules before anything touches the
 * device. Messages start with the command name and give the values, so a
 * client author can see what was wrong.
 */
export function validateRequest(request: RequestHeader, context: ValidationContext): Validation {
  const name = commandNames[request.type] ?? `command ${request.type}`;
  const allowed = allowedFlags[request.type];
  if (allowed === undefined) return fail(NbdErrno.EINVAL, `invalid request: unknown command ${request.type}`);
  const unknownFlags = request.flags & ~allowed;
  if (unknownFlags !== 0) {
    return fail(NbdErrno.EINVAL, `invalid request: ${name}: flags 0x${unknownFlags.toString(16)} are not valid for this command`);
  }
  const writes = request.type === Command.WRITE || request.type === Command.TRIM || request.type === Command.WRITE_ZEROES;
  if (writes && (context.transmissionFlags & TransmissionFlag.READ_ONLY) !== 0) {
    return fail(NbdErrno.EPERM, `invalid request: ${name}: the export is read-only`);
  }
  if ((request.flags & CommandFlag.DF) !== 0 && !context.structuredReplies) {
    return fail(NbdErrno.EINVAL, `invalid request: ${name}: DF needs structured replies`);
  }
  if ((request.flags & CommandFlag.FAST_ZERO) !== 0 && (context.transmissionFlags & TransmissionFlag.SEND_FAST_ZERO) === 0) {
    return fail(NbdErrno.EINVAL, `invalid request: ${name}: FAST_ZERO was not advertised`);
  }
  if (request.type === Command.FLUSH) {
    if (request.offset !== 0n || request.lengthBytes !== 0) {
      return fail(NbdErrno.EINVAL, `invalid request: FLUSH: offset ${request.offset} and length ${request.lengthBytes} must be zero`);
    }
    return { ok: true, offsetBytes: 0 };
  }
  if (request.type === Command.BLOCK_STATUS) {
    if (!context.blockStatusNegotiated) {
      return fail(NbdErrno.EINVAL, 'invalid request: BLOCK_STATUS: no metadata context was negotiated');
    }
    if (request.lengthBytes === 0) return fail(NbdErrno.EINVAL, 'invalid request: BLOCK_STATUS: length is zero');
  }
  if ((request.type === Command.READ || request.type === Command.WRITE) && request.lengthBytes > Limits.payloadBytesMax) {
    return fail(NbdErrno.EINVAL,
      `invalid request: ${name}: length ${request.lengthBytes} exceeds the maximum block size ${Limits.payloadBytesMax}`);
  }
  const end = request.offset + BigInt(request.lengthBytes);
  if (end > BigInt(context.sizeBytes)) {
    // Spec: writes past the end SHOULD be ENOSPC, everything else EINVAL.
    const error = request.type === Command.WRITE || request.type === Command.WRITE_ZEROES ? NbdErrno.ENOSPC : NbdErrno.EINVAL;
    return fail(error, `invalid request: ${name}: offset ${request.offset} + length ${request.lengthBytes} ` +
      `is beyond the end of the export (size ${context.sizeBytes})`);
  }
  return { ok: true, offsetBytes: Number(request.offset) };
}
