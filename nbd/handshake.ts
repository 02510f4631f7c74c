import assert from 'node:assert/strict';
import { ClientFlag, IHAVEOPT, Limits } from './constants.js';
import type { InputQueue } from './input-queue.js';
import {
  answerUnreadOption, type ExportEntry, type ExportTable, handleOption, type MetaContext, type Negotiation, negotiationAfterTls, newNegotiation,
} from './negotiation.js';
import type { TlsMode } from './tls-credentials.js';

/**
 * The phases of one connection, in order. Fixed newstyle only: the server's
 * greeting is sent on accept, then the client's 4 flag bytes, then options
 * until GO or EXPORT_NAME, then requests; closing lets replies drain. After
 * STARTTLS the TLS handshake runs, then options start over inside TLS.
 */
export type Phase = 'client-flags' | 'options' | 'tls-handshake' | 'transmission' | 'closing' | 'closed';

/** Which phase may follow which, and what each reads: the table every phase change is checked against. */
export const phaseTable: Record<Phase, { reads: string; next: readonly Phase[] }> = {
  'client-flags': { reads: 'the 4 bytes of client flags', next: ['options', 'closing', 'closed'] },
  options: { reads: 'option headers (16 bytes) and their data', next: ['tls-handshake', 'transmission', 'closing', 'closed'] },
  'tls-handshake': { reads: 'nothing of ours (the TLS layer reads the client\'s handshake)', next: ['options', 'closing', 'closed'] },
  transmission: { reads: 'request headers (28 bytes) and write payloads', next: ['closing', 'closed'] },
  closing: { reads: 'nothing (replies drain, then the socket ends)', next: ['closed'] },
  closed: { reads: 'nothing', next: [] },
};

/** Asserts that `to` may follow `from` (an assertion: a wrong edge is our bug, on in production). */
export function checkedPhase(from: Phase, to: Phase): Phase {
  if (!phaseTable[from].next.includes(to)) assert.fail(`connection phase ${from} -> ${to} is not in the phase table`);
  return to;
}

/** What one step of the handshake asks the connection to do. */
export type HandshakeStep =
  | { kind: 'wait' }
  | { kind: 'continue' }
  /** Skip `bytes` of input as it arrives (an option too large to buffer), then send the reply or disconnect. */
  | { kind: 'skip'; bytes: number; afterwards: { kind: 'reply'; reply: Buffer } | { kind: 'disconnect'; reason: string } }
  | { kind: 'options'; negotiation: Negotiation }
  /** STARTTLS was acknowledged: the next bytes are the client's TLS handshake. */
  | { kind: 'starttls' }
  | { kind: 'transmission'; entry: ExportEntry; flags: number }
  | { kind: 'close'; reason: string }
  | { kind: 'disconnect'; reason: string };

/** Reads the client flags: fixed newstyle is required, unknown bits refused. */
export function readClientFlags(input: InputQueue, tls: TlsMode = 'off'): HandshakeStep {
  if (input.length < 4) return { kind: 'wait' };
  const flags = input.take(4).readUInt32BE(0);
  const known = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES;
  if ((flags & ~known) !== 0) return { kind: 'disconnect', reason: `client flags 0x${flags.toString(16)} include unknown bits` };
  if ((flags & ClientFlag.FIXED_NEWSTYLE) === 0) {
    return { kind: 'disconnect', reason: 'client does not support fixed newstyle negotiation, the only kind served' };
  }
  return { kind: 'options', negotiation: newNegotiation(flags, tls) };
}

/**
 * Reads options one at a time: the header, then (once all of it is here) the
 * data, answered by negotiation.ts. An option longer than the bound is never
 * buffered: its data is skipped as it arrives and it gets the answer it would
 * get read (ERR_UNSUP for an unknown option, ERR_TOO_BIG for a known one).
 * Data beyond what any option could need is taken as an attack and ends the
 * connection, as the spec allows for a suspected denial of service.
 */
export class OptionReader {
  private pending: { option: number; lengthBytes: number } | undefined;

  constructor(private negotiation: Negotiation, private readonly exports: ExportTable,
    private readonly send: (reply: Buffer) => void, private readonly isShuttingDown: () => boolean) {}

  get structuredReplies(): boolean {
    return this.negotiation.structuredReplies;
  }

  get metaContextExport(): string | undefined {
    return this.negotiation.metaContextExport;
  }

  get metaContexts(): MetaContext[] {
    return this.negotiation.metaContexts;
  }

  next(input: InputQueue): HandshakeStep {
    if (this.pending === undefined) {
      if (input.length < 16) return { kind: 'wait' };
      const header = input.take(16);
      if (header.readBigUInt64BE(0) !== IHAVEOPT) return { kind: 'disconnect', reason: 'bad option magic' };
      const option = header.readUInt32BE(8);
      const lengthBytes = header.readUInt32BE(12);
      if (this.negotiation.optionsSeen >= Limits.optionsPerConnectionMax) {
        return { kind: 'disconnect', reason: `more than ${Limits.optionsPerConnectionMax} options` };
      }
      if (lengthBytes > Limits.optionSkipBytesMax) {
        return { kind: 'disconnect', reason: `option ${option} of ${lengthBytes} bytes, over the ${Limits.optionSkipBytesMax} any option may carry` };
      }
      if (lengthBytes > Limits.optionBytesMax) {
        this.negotiation.optionsSeen += 1;
        const answer = answerUnreadOption(this.negotiation, option, lengthBytes, this.isShuttingDown());
        return { kind: 'skip', bytes: lengthBytes, afterwards: 'reply' in answer
          ? { kind: 'reply', reply: answer.reply } : { kind: 'disconnect', reason: answer.disconnect } };
      }
      this.pending = { option, lengthBytes };
    }
    const { option, lengthBytes } = this.pending;
    if (input.length < lengthBytes) return { kind: 'wait' };
    this.pending = undefined;
    const outcome = handleOption(this.negotiation, this.exports, option, input.take(lengthBytes), this.isShuttingDown());
    for (const reply of outcome.replies) this.send(reply);
    if (outcome.next === 'close') return { kind: 'close', reason: outcome.reason };
    if (outcome.next === 'transmission') return { kind: 'transmission', entry: outcome.entry, flags: outcome.flags };
    if (outcome.next === 'starttls') return { kind: 'starttls' };
    return { kind: 'continue' };
  }

  /** The TLS handshake finished: options start over, with nothing negotiated. */
  restartAfterTls(): void {
    this.negotiation = negotiationAfterTls(this.negotiation);
  }
}
