import fs from 'node:fs';
import { crc32 } from 'node:zlib';

/**
 * The raw workload's durability oracle. Every sector the workload writes
 * describes itself (raw_workload.py): magic, operation id, sector number and
 * a CRC. So reading a sector back says which operation's bytes it holds, and
 * the journal of sends and acknowledgements says which operations it may
 * legitimately hold.
 */
export const sectorBytes = 512;
const sectorMagic = Buffer.from('NBDMCTS1');

/** What a sector holds: "z" (zeroes), "#<op id>", or "?<why>" for anything no operation wrote there. */
export type Token = string;

export function tokenOf(sector: Buffer, sectorNumber: number): Token {
  if (sector.every((byte) => byte === 0)) return 'z';
  if (!sector.subarray(0, 8).equals(sectorMagic)) return '?foreign bytes';
  const opId = Number(sector.readBigUInt64LE(8));
  const stored = sector.readUInt32LE(24);
  if (crc32(sector.subarray(28), crc32(sector.subarray(0, 24))) !== stored) return `?torn inside a sector (op ${opId})`;
  const number = Number(sector.readBigUInt64LE(16));
  if (number !== sectorNumber) return `?misplaced: op ${opId}'s sector ${number}`;
  return `#${opId}`;
}

export interface JournalEntry {
  id: number;
  op: 'write' | 'trim' | 'zero' | 'flush';
  fua?: boolean;
  off?: number;
  len?: number;
  sent: number;
  acked: number | null;
  err: string | null;
}

export function readJournal(file: string): JournalEntry[] {
  if (!fs.existsSync(file)) return [];
  return fs.readFileSync(file, 'utf8').split('\n').filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as JournalEntry);
}

/** One server lifetime's operations: a flush only vouches for writes acknowledged in the same lifetime. */
export interface Phase {
  entries: JournalEntry[];
}

export type Violation = {
  invariant: 2 | 3;
  sector: number;
  found: Token;
  /** The operation the device promised to keep (or something newer). */
  promisedOp?: number;
  promisedBy?: 'fua' | 'flush';
  detail: string;
};

interface SectorOp {
  entry: JournalEntry;
  promisedBy: 'fua' | 'flush' | undefined;
}

export class DurabilityOracle {
  /** What each sector of the area held when last verified. */
  private baseline: Token[];

  constructor(readonly areaStartBytes: number, readonly areaBytes: number) {
    this.baseline = new Array<Token>(areaBytes / sectorBytes).fill('z');
  }

  /**
   * Checks the device's bytes over the area against the phases' journals,
   * then adopts them as the baseline for the next round. Returns every sector
   * that holds something the promises rule out.
   */
  verify(image: Buffer, phases: Phase[]): Violation[] {
    const sectors = this.areaBytes / sectorBytes;
    const touching: SectorOp[][] = Array.from({ length: sectors }, () => []);
    for (const phase of phases) {
      const lastFlushSent = phase.entries.reduce((latest, entry) => (entry.op === 'flush' && entry.acked !== null &&
        entry.err === null && entry.sent > latest ? entry.sent : latest), -Infinity);
      for (const entry of phase.entries) {
        if (entry.op === 'flush') continue;
        const promisedBy = entry.acked === null || entry.err !== null ? undefined
          : entry.fua ? 'fua' : lastFlushSent > entry.acked ? 'flush' : undefined;
        const first = (entry.off! - this.areaStartBytes) / sectorBytes;
        for (let index = 0; index < entry.len! / sectorBytes; index += 1) touching[first + index]?.push({ entry, promisedBy });
      }
    }
    const violations: Violation[] = [];
    const next: Token[] = [];
    for (let index = 0; index < sectors; index += 1) {
      const sectorNumber = this.areaStartBytes / sectorBytes + index;
      const found = tokenOf(image.subarray(index * sectorBytes, (index + 1) * sectorBytes), sectorNumber);
      next.push(found);
      const ops = touching[index].sort((a, b) => a.entry.id - b.entry.id);
      const acceptable = acceptableTokens(this.baseline[index], ops);
      if (acceptable.tokens.has(found)) continue;
      const promised = acceptable.promised;
      violations.push({
        invariant: promised?.promisedBy === 'flush' ? 3 : 2,
        sector: sectorNumber,
        found,
        promisedOp: promised?.entry.id,
        promisedBy: promised?.promisedBy,
        detail: promised
          ? `sector ${sectorNumber} holds ${found}, but op ${promised.entry.id} (${promised.entry.op}) was ` +
            (promised.promisedBy === 'fua' ? 'acknowledged with FUA' : 'acknowledged before a successful flush') +
            ` and may only be replaced by ${[...acceptable.tokens].join(', ')}`
          : `sector ${sectorNumber} holds ${found}; only ${[...acceptable.tokens].join(', ')} were ever written there`,
      });
    }
    this.baseline = next;
    return violations;
  }
}

function tokenWritten(op: JournalEntry): Token {
  return op.op === 'write' ? `#${op.id}` : 'z';
}

/**
 * The last promised operation on a sector, or anything sent after it (each
 * may have landed or not), may be what the sector holds; with no promise,
 * the baseline is allowed too. A trim may leave the old bytes, so it adds
 * zeroes without ruling out what came before it.
 */
function acceptableTokens(baseline: Token, ops: SectorOp[]): { tokens: Set<Token>; promised: SectorOp | undefined } {
  let promisedIndex = -1;
  ops.forEach((op, index) => { if (op.promisedBy) promisedIndex = index; });
  const tokens = new Set<Token>();
  if (promisedIndex < 0 || ops[promisedIndex].entry.op === 'trim') {
    tokens.add(baseline);
    for (const op of ops.slice(0, Math.max(0, promisedIndex))) tokens.add(tokenWritten(op.entry));
  }
  for (const op of ops.slice(Math.max(0, promisedIndex))) tokens.add(tokenWritten(op.entry));
  return { tokens, promised: promisedIndex < 0 ? undefined : ops[promisedIndex] };
}
