import fs from 'node:fs';
import { isDurabilityMark } from '../../faults/write-log-format.js';
import { WriteLogReader } from '../../faults/write-log-device.js';
import type { Say } from './harness.js';
import { type JournalEntry, type Phase, sectorBytes, tokenOf } from './oracle.js';
import { pathsIn, type CrashTestSettings } from './plan.js';
import { areas } from './workloads.js';

export interface ReplayOutcome {
  marks: number;
  failures: number;
}

interface Promise_ {
  /** CLOCK_MONOTONIC ns at which the client was told the operation is durable. */
  atNs: bigint;
  entry: JournalEntry;
}

/**
 * When each raw operation became a promise: a FUA write when acknowledged; any
 * other write when the first successful flush sent after its acknowledgement
 * (in the same server lifetime) was acknowledged.
 */
export function promisesOf(phases: Phase[]): Promise_[] {
  const promises: Promise_[] = [];
  for (const phase of phases) {
    const flushes = phase.entries.filter((entry) => entry.op === 'flush' && entry.acked !== null && entry.err === null)
      .sort((a, b) => a.sent - b.sent);
    for (const entry of phase.entries) {
      if (entry.op === 'flush' || entry.acked === null || entry.err !== null) continue;
      if (entry.fua) {
        promises.push({ atNs: BigInt(entry.acked), entry });
        continue;
      }
      const covering = flushes.find((flush) => flush.sent > entry.acked!);
      if (covering) promises.push({ atNs: BigInt(covering.acked!), entry });
    }
  }
  return promises.sort((a, b) => (a.atNs < b.atNs ? -1 : a.atNs > b.atNs ? 1 : 0));
}

/**
 * The --replay walk (our dm-log-writes replay): rebuilds each leg from its
 * write log, record by record, and at every flush and FUA mark checks the
 * raw area: every sector holds bytes some operation wrote there, and every
 * operation the client had been promised before the mark (FUA, or a flush
 * acknowledged) is there or was overwritten by a later one.
 */
export async function replayWriteLogs(settings: CrashTestSettings, say: Say, phases: Phase[]): Promise<ReplayOutcome> {
  const paths = pathsIn(settings.workDir);
  const [rawStart, rawBytes] = areas(settings.sizeBytes).raw;
  const firstSector = rawStart / sectorBytes;
  const sectors = rawBytes / sectorBytes;
  const promises = promisesOf(phases);
  const zeroingOps = new Map<number, number[]>();
  for (const phase of phases) {
    for (const entry of phase.entries) {
      if (entry.op !== 'trim' && entry.op !== 'zero') continue;
      for (let sector = entry.off! / sectorBytes; sector < (entry.off! + entry.len!) / sectorBytes; sector += 1) {
        const list = zeroingOps.get(sector) ?? [];
        list.push(entry.id);
        zeroingOps.set(sector, list);
      }
    }
  }
  const outcome: ReplayOutcome = { marks: 0, failures: 0 };
  for (const [slot, logPath] of paths.writeLogs.entries()) {
    if (!fs.existsSync(logPath)) continue;
    const reader = WriteLogReader.open(logPath);
    const imagePath = `${logPath}.replay.img`;
    const imageFd = reader.startImage(imagePath);
    const tokens: string[] = [];
    const initial = Buffer.alloc(rawBytes);
    fs.readSync(imageFd, initial, 0, rawBytes, rawStart);
    for (let index = 0; index < sectors; index += 1) tokens.push(tokenOf(initial.subarray(index * sectorBytes, (index + 1) * sectorBytes), firstSector + index));
    const required: Array<JournalEntry | undefined> = new Array(sectors);
    const toCheck = new Set<number>();
    let nextPromise = 0;
    let marks = 0;
    const problems: string[] = [];
    const records = reader.records();
    for (let step = records.next(); !step.done; step = records.next()) {
      const { record, data } = step.value;
      if (record.kind === 'write' || record.kind === 'trim' || record.kind === 'zeroes') {
        const start = Math.max(record.offsetBytes, rawStart);
        const end = Math.min(record.offsetBytes + record.lengthBytes, rawStart + rawBytes);
        for (let at = start; at < end; at += sectorBytes) {
          const index = (at - rawStart) / sectorBytes;
          tokens[index] = record.kind === 'write'
            ? tokenOf(data!.subarray(at - record.offsetBytes, at - record.offsetBytes + sectorBytes), firstSector + index) : 'z';
          toCheck.add(index);
        }
      }
      if (!isDurabilityMark(record)) continue;
      marks += 1;
      while (nextPromise < promises.length && promises[nextPromise].atNs < record.monotonicNs) {
        const { entry } = promises[nextPromise++];
        for (let at = Math.max(entry.off!, rawStart); at < Math.min(entry.off! + entry.len!, rawStart + rawBytes); at += sectorBytes) {
          const index = (at - rawStart) / sectorBytes;
          if (!required[index] || required[index]!.id < entry.id) required[index] = entry;
          toCheck.add(index);
        }
      }
      for (const index of toCheck) {
        const problem = sectorProblem(tokens[index], required[index], zeroingOps.get(firstSector + index));
        if (problem && problems.length < 5) problems.push(`mark ${marks} (record ${record.sequence}): sector ${firstSector + index} ${problem}`);
        if (problem) outcome.failures += 1;
      }
      toCheck.clear();
    }
    fs.closeSync(imageFd);
    reader.close();
    fs.rmSync(imagePath, { force: true });
    outcome.marks += marks;
    say(`replay leg${slot}: ${marks} flush/FUA marks checked, ${problems.length === 0 ? 'every state consistent' : `FAIL: ${problems.join('; ')}`}`);
  }
  return outcome;
}

function sectorProblem(token: string, required: JournalEntry | undefined, zeroing: number[] | undefined): string | undefined {
  if (token.startsWith('?')) return `holds ${token.slice(1)}`;
  if (!required || required.op === 'trim') return undefined;
  if (token === 'z') {
    return zeroing?.some((id) => id >= required.id) ? undefined
      : `reads zeroes, but op ${required.id} (${required.op}) had been promised durable`;
  }
  const id = Number(token.slice(1));
  return id >= required.id ? undefined : `holds op ${id}, older than op ${required.id} which had been promised durable`;
}
