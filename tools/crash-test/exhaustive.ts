import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import type { FaultPlan } from '../../faults/fault-device.js';
import { MirrorController, type MirrorSettings } from '../../mirror/controller.js';
import { CrashPoints } from '../../faults/crash-points.js';
import { type CutPolicy, cutPolicies } from '../../faults/power-cut-device.js';
import type { Say } from './harness.js';

/**
 * CrashMonkey/ACE-style bounded workloads, run in-process: every sequence of
 * up to three operations (write, FUA write, trim, write-zeroes over either of
 * two regions, and flush), each optionally followed by a sweep, with the
 * power cut after each step. Each cut gives the legs and the log their own
 * policy (rotating through all 27 combinations), then the mirror is
 * reassembled from the files, recovers, and is checked: legs identical,
 * reads stable during recovery, and every promised operation's bytes (or a
 * later operation's) in every sector.
 */
type Op = { kind: 'write' | 'fua-write' | 'trim' | 'zeroes'; region: 0 | 1 } | { kind: 'flush' };

const regionBytes = 4096;
const sectorBytes = 512;
const logger = pino({ level: 'silent' });

export function alphabet(): Op[] {
  const ops: Op[] = [{ kind: 'flush' }];
  for (const kind of ['write', 'fua-write', 'trim', 'zeroes'] as const) for (const region of [0, 1] as const) ops.push({ kind, region });
  return ops;
}

export function sequencesUpTo(length: number): Op[][] {
  const result: Op[][] = [];
  let frontier: Op[][] = [[]];
  for (let step = 0; step < length; step += 1) {
    frontier = frontier.flatMap((sequence) => alphabet().map((op) => [...sequence, op]));
    result.push(...frontier);
  }
  return result;
}

function describe(ops: Op[]): string {
  return ops.map((op) => (op.kind === 'flush' ? 'flush' : `${op.kind}(r${op.region})`)).join(', ');
}

/** Byte pattern unique to (run, step, sector), never zero. */
function pattern(run: number, step: number, region: number): Buffer {
  const data = Buffer.alloc(regionBytes);
  for (let sector = 0; sector < regionBytes / sectorBytes; sector += 1) {
    const fill = Buffer.from(`r${run}s${step}g${region}x${sector};`);
    for (let at = 0; at < sectorBytes; at += fill.length) fill.copy(data, sector * sectorBytes + at, 0, Math.min(fill.length, sectorBytes - at));
  }
  return data;
}

export interface ExhaustiveOutcome {
  runs: number;
  failures: string[];
}

/** A disk of the mirror under test: a leg by slot, or the region log. */
export type ExhaustiveDisk = 0 | 1 | 'log';

export async function runExhaustive(options: { seed: number; say: Say; maxLength?: number; sweeps?: boolean[]; limit?: number;
  dir?: string;
  /**
   * Disks that acknowledge flushes and FUA without making anything durable
   * (FaultPlan.ignoreDurability) until the power cut: the oracle's own test,
   * which must then report lost promises.
   */
  lyingDisks?: ExhaustiveDisk[] }): Promise<ExhaustiveOutcome> {
  const base = options.dir ?? fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'nbd-mirror-exhaustive-'));
  const sequences = sequencesUpTo(options.maxLength ?? 3);
  const outcome: ExhaustiveOutcome = { runs: 0, failures: [] };
  const combos: Array<[CutPolicy, CutPolicy, CutPolicy]> = [];
  for (const a of cutPolicies) for (const b of cutPolicies) for (const c of cutPolicies) combos.push([a, b, c]);
  const started = Date.now();
  try {
    for (const sweep of options.sweeps ?? [false, true]) {
      for (const [index, sequence] of sequences.entries()) {
        for (let crashAfter = 1; crashAfter <= sequence.length; crashAfter += 1) {
          if (options.limit !== undefined && outcome.runs >= options.limit) break;
          const policies = combos[(outcome.runs + options.seed) % combos.length];
          const dir = path.join(base, `run-${outcome.runs}`);
          const problem = await crashRun(dir, sequence.slice(0, crashAfter), sweep, policies, outcome.runs, options.seed, options.lyingDisks ?? []);
          if (problem) {
            const line = `[${describe(sequence.slice(0, crashAfter))}]${sweep ? ' with sweeps' : ''}, cut ${policies.join('/')}: ${problem}`;
            outcome.failures.push(line);
            if (outcome.failures.length <= 10) options.say(`FAIL ${line}`);
          }
          fs.rmSync(dir, { recursive: true, force: true });
          outcome.runs += 1;
        }
        if (index % 200 === 199) options.say(`exhaustive: ${outcome.runs} crashes so far, ${outcome.failures.length} failing`);
      }
    }
  } finally {
    if (options.dir === undefined) fs.rmSync(base, { recursive: true, force: true });
  }
  options.say(`exhaustive: ${outcome.runs} crashes over ${sequences.length} sequences (up to ${options.maxLength ?? 3} operations, ` +
    `two regions), ${outcome.failures.length} failing, ${Math.round((Date.now() - started) / 1000)} s`);
  return outcome;
}

function settingsFor(dir: string, policies?: [CutPolicy, CutPolicy, CutPolicy], seed = 1, lyingDisks: ExhaustiveDisk[] = []): MirrorSettings {
  const lies = (disk: ExhaustiveDisk): FaultPlan | undefined => (lyingDisks.includes(disk) ? { rules: [], ignoreDurability: true } : undefined);
  return {
    logPath: path.join(dir, 'mirror.log'),
    logWrap: policies ? { powerCut: { policy: policies[2], seed: seed + 2 }, faults: lies('log') } : undefined,
    legs: ([0, 1] as const).map((slot) => ({ path: path.join(dir, `leg${slot}.img`),
      powerCut: policies ? { policy: policies[slot], seed: seed + slot } : undefined, faults: policies ? lies(slot) : undefined })),
    sizeBytes: 2 * regionBytes,
    regionSizeBytes: regionBytes,
    readPolicy: 'round-robin',
    resyncBytesPerSecond: 0,
    createIfMissing: true,
    force: false,
    quietSweepsBeforeClean: 0,
  };
}

interface SectorHistory {
  /** What each sector may hold, from the last promised operation on (inclusive). */
  acceptable: Set<string>;
}

/** Runs the steps, cuts the power, recovers from the files; returns what is wrong, if anything. */
async function crashRun(dir: string, steps: Op[], sweep: boolean, policies: [CutPolicy, CutPolicy, CutPolicy],
  run: number, seed: number, lyingDisks: ExhaustiveDisk[]): Promise<string | undefined> {
  fs.mkdirSync(dir, { recursive: true });
  const crashPoints = new CrashPoints();
  const mirror = await MirrorController.open({ ...settingsFor(dir, policies, seed + run, lyingDisks), crashPoints }, logger);
  const zero = Buffer.alloc(sectorBytes).toString('hex');
  // Per sector: what it may hold if the power went now, and what it must hold once the next flush completes.
  const sectors: SectorHistory[] = Array.from({ length: (2 * regionBytes) / sectorBytes }, () => ({ acceptable: new Set([zero]) }));
  const afterNextFlush = new Map<number, Set<string>>();
  for (const [step, op] of steps.entries()) {
    if (op.kind === 'flush') {
      await mirror.device.flush();
      for (const [sector, tokens] of afterNextFlush) sectors[sector].acceptable = tokens;
      afterNextFlush.clear();
    } else {
      const offset = op.region * regionBytes;
      const fua = op.kind === 'fua-write';
      let bytes: Buffer;
      if (op.kind === 'write' || op.kind === 'fua-write') {
        bytes = pattern(run, step, op.region);
        await mirror.device.write(offset, bytes, { fua });
      } else {
        bytes = Buffer.alloc(regionBytes);
        if (op.kind === 'trim') await mirror.device.trim(offset, regionBytes, { fua: false });
        else await mirror.device.writeZeroes(offset, regionBytes, { fua: false, noHole: false, fast: false });
      }
      for (let index = 0; index < regionBytes / sectorBytes; index += 1) {
        const sector = op.region * (regionBytes / sectorBytes) + index;
        const token = bytes.subarray(index * sectorBytes, (index + 1) * sectorBytes).toString('hex');
        const history = sectors[sector];
        // A trim may leave the old bytes: it adds zeroes and rules nothing out.
        const settled = op.kind === 'trim'
          ? new Set([...(afterNextFlush.get(sector) ?? history.acceptable), token]) : new Set([token]);
        if (fua) {
          history.acceptable = settled;
          afterNextFlush.delete(sector);
        } else {
          history.acceptable.add(token);
          afterNextFlush.set(sector, settled);
        }
      }
    }
    if (sweep) {
      await mirror.device.sweep({ ignoreQuietPasses: true });
      await mirror.device.sweep({ ignoreQuietPasses: true });
    }
  }
  await crashPoints.powerCuts.cutAll();
  void mirror.resync.stop();
  await mirror.device.close();

  let recovered: MirrorController;
  try {
    recovered = await MirrorController.open(settingsFor(dir), logger);
  } catch (error) {
    // Refusing is right when the files contradict each other, but after an honest power cut they never should.
    return `recovery refused to assemble the mirror: ${(error as Error).message}`;
  }
  try {
    // Invariant 4: reads during recovery agree with themselves (round-robin sends the two reads to different legs).
    for (let region = 0; region < 2; region += 1) {
      const first = Buffer.alloc(regionBytes);
      const second = Buffer.alloc(regionBytes);
      await recovered.device.read(region * regionBytes, first);
      await recovered.device.read(region * regionBytes, second);
      if (!first.equals(second)) return `invariant 4: region ${region} read twice during recovery gave different bytes`;
    }
    await recovered.resync.idle();
    const check = await recovered.check();
    if (check.mismatchedRegions.length > 0) return `invariant 1: legs differ in regions ${check.mismatchedRegions.join(', ')} after recovery`;
    const image = Buffer.alloc(2 * regionBytes);
    await recovered.device.read(0, image);
    for (const [sector, history] of sectors.entries()) {
      const found = image.subarray(sector * sectorBytes, (sector + 1) * sectorBytes).toString('hex');
      if (!history.acceptable.has(found)) {
        return `invariant 2/3: sector ${sector} holds ${found === zero ? 'zeroes' : `"${Buffer.from(found, 'hex').subarray(0, 12).toString()}…"`}, ` +
          'which the promised operations rule out';
      }
    }
    return undefined;
  } finally {
    await recovered.shutdown();
    await recovered.close();
  }
}
