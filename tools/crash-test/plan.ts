import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { type CrashPointName, formatCrashPlan, workloadCrashPointNames } from '../../faults/crash-points.js';
import { type CutPolicy, cutPolicies } from '../../faults/power-cut-device.js';
import { randomBelow, seededRandom } from '../../faults/seeded-random.js';

export type WorkloadKind = 'raw' | 'fio' | 'ext4';
export type CrashKind = 'kill' | 'point' | 'power-cut';
/**
 * Leg faults act on the leg's device; link faults on a remote leg (--remote-leg): its network link cut or stalled,
 * or its server killed or stopped and started again (remote-restart).
 */
export type FaultKind = 'none' | 'leg-eio' | 'leg-enospc' | 'link-cut' | 'link-stall' | 'remote-restart';
export const workloadKinds: WorkloadKind[] = ['raw', 'fio', 'ext4'];
export const crashKinds: CrashKind[] = ['kill', 'point', 'power-cut'];
export const faultKinds: FaultKind[] = ['none', 'leg-eio', 'leg-enospc', 'link-cut', 'link-stall', 'remote-restart'];

export function isLinkFault(fault: FaultKind): boolean {
  return fault === 'link-cut' || fault === 'link-stall' || fault === 'remote-restart';
}

export interface CrashTestSettings {
  workDir: string;
  seed: number;
  /** Stop after this many iterations, or when the time is up, whichever comes first. */
  iterations: number;
  /** Iteration numbers start here (to rerun one reported iteration; its choices depend only on the seed and its number). */
  firstIteration: number;
  timeLimitMs: number;
  workloads: WorkloadKind[];
  crashes: CrashKind[];
  faults: FaultKind[];
  /** Every iteration runs with the cache, without, or each iteration draws. */
  cache: 'on' | 'off' | 'mixed';
  sizeBytes: number;
  regionSizeBytes: number;
  /** How long each workload runs before its crash (at most). */
  workloadMs: number;
  /** Record every leg's writes in a write log (for --replay). */
  writeLogs: boolean;
  /** leg1 is a remote leg: another server process (another host's export) reached through a fault proxy. */
  remoteLeg: boolean;
}

/** Everything one iteration does, drawn from its own seed so a failing iteration can be named and rerun. */
export interface IterationPlan {
  index: number;
  seed: number;
  workload: WorkloadKind;
  crash: CrashKind;
  /** For crash "point": where, which hit after how long, and whether it cuts the power or kills. */
  point?: { name: CrashPointName; hit: number; afterMs: number; action: 'kill' | 'power-cut' };
  fault: FaultKind;
  faultSlot: number;
  cache: boolean;
  /** Power-cut policy of leg0, leg1 and the log, independently. */
  cutPolicies: [CutPolicy, CutPolicy, CutPolicy];
  /** When the crash comes, as a fraction of the workload's time. */
  crashAt: number;
  /** The legs' atomic unit at a power cut (the log always tears at 512 bytes). */
  legSectorBytes: number;
}

export function iterationSeed(seed: number, index: number): number {
  return (Math.imul(seed ^ 0x5bd1e995, 0x9e3779b1) + Math.imul(index + 1, 0x85ebca6b)) >>> 0;
}

export function planIteration(settings: CrashTestSettings, index: number): IterationPlan {
  const seed = iterationSeed(settings.seed, index);
  const random = seededRandom(seed);
  const pick = <T>(choices: readonly T[]): T => choices[randomBelow(random, choices.length)];
  const workload = pick(settings.workloads);
  const crash = pick(settings.crashes);
  const fault = pick(settings.faults);
  const plan: IterationPlan = {
    index,
    seed,
    workload,
    crash,
    fault,
    faultSlot: randomBelow(random, 2),
    cache: settings.cache === 'mixed' ? random() < 0.5 : settings.cache === 'on',
    cutPolicies: [pick(cutPolicies), pick(cutPolicies), pick(cutPolicies)],
    crashAt: 0.2 + random() * 0.75,
    legSectorBytes: legSectorBytes(workload),
  };
  // A link fault is on the remote leg's link, which is leg1's.
  if (isLinkFault(fault)) plan.faultSlot = 1;
  if (crash === 'point') {
    const name = pick(workloadCrashPointNames);
    const action = random() < 0.5 ? 'kill' : 'power-cut';
    // Every other point strikes at its first hit after the planned crash time, however often the workload
    // reaches it. Resync runs at the restart, over only the regions the crash left dirty: an early hit.
    plan.point = name === 'resync.between-read-and-write'
      ? { name, hit: 1 + randomBelow(random, 8), afterMs: 0, action }
      : { name, hit: 1, afterMs: Math.round(plan.crashAt * settings.workloadMs), action };
  }
  return plan;
}

/**
 * The raw workload's oracle judges every 512-byte sector on its own, so its
 * legs tear as finely as any disk can; real clients get the 4 KiB sectors they
 * assume (see PowerCutOptions.sectorBytes). Not drawn, so a seed's plans stay as they were.
 */
function legSectorBytes(workload: WorkloadKind): number {
  return workload === 'raw' ? 512 : 4096;
}

export function describePlan(plan: IterationPlan): string {
  const crash = plan.crash === 'point' ? `point ${pointText(plan)}` : plan.crash;
  return `#${plan.index} seed ${plan.seed}: ${plan.workload}, ${crash}, fault ${plan.fault}` +
    `${plan.fault === 'none' ? '' : ` on leg${plan.faultSlot}`}, cache ${plan.cache ? 'on' : 'off'}, cut ${plan.cutPolicies.join('/')}` +
    ` (leg sectors ${plan.legSectorBytes} B)`;
}

export interface Paths {
  config: string;
  admin: string;
  legs: [string, string];
  log: string;
  writeLogs: [string, string];
}

export function pathsIn(workDir: string): Paths {
  return {
    config: path.join(workDir, 'config.yaml'),
    admin: path.join(workDir, 'admin.sock'),
    legs: [path.join(workDir, 'leg0.img'), path.join(workDir, 'leg1.img')],
    log: path.join(workDir, 'mirror.log'),
    writeLogs: [path.join(workDir, 'leg0.wlog'), path.join(workDir, 'leg1.wlog')],
  };
}

/**
 * The server's configuration for one iteration: both legs and the log sit
 * on power-cut devices (with this iteration's policies), each leg under a
 * fault rule that waits for the harness's trigger. The sweeper runs often
 * and resync is rate-limited, so crashes land in every phase and recovery
 * lasts long enough to be read from.
 */
export function writeConfig(settings: CrashTestSettings, plan: IterationPlan, paths: Paths, remoteLegUri?: string): void {
  const legFaults = (slot: number): unknown => (plan.fault === 'none' || isLinkFault(plan.fault) || slot !== plan.faultSlot ? undefined : {
    rules: [{ ops: ['write'], error: plan.fault === 'leg-eio' ? 'EIO' : 'ENOSPC', armed: false, sticky: true }],
    seed: plan.seed,
  });
  const config = {
    listen: { tcp: '127.0.0.1:0', unix: null, admin: paths.admin },
    export: { name: 'crash', description: 'nbd-mirror crash test' },
    storage: {
      sizeBytes: settings.sizeBytes,
      regionSize: settings.regionSizeBytes,
      sweepIntervalMs: 150,
      resyncRate: '16MiB',
      log: { path: paths.log, powerCut: { policy: plan.cutPolicies[2], seed: plan.seed + 2 } },
      legs: [0, 1].map((slot) => (slot === 1 && remoteLegUri !== undefined ? {
        // Another host's export: the primary's power cut does not reach it, and a silent link fails it in a second.
        path: remoteLegUri,
        failfastMs: 1000,
        faults: legFaults(slot),
        writeLog: settings.writeLogs ? paths.writeLogs[slot] : undefined,
      } : {
        path: paths.legs[slot],
        powerCut: { policy: plan.cutPolicies[slot], seed: plan.seed + slot, sectorBytes: plan.legSectorBytes },
        faults: legFaults(slot),
        writeLog: settings.writeLogs ? paths.writeLogs[slot] : undefined,
      })),
    },
    cache: plan.cache
      ? { enabled: true, size: '32MiB', dirtyLimit: '8MiB', dirtyExpireMs: 300, writebackIntervalMs: 100, noSpacePolicy: 'error' }
      : { enabled: false },
    log: { level: 'info' },
  };
  fs.writeFileSync(paths.config, YAML.stringify(config));
}

/** The crash point as `--crash-point` takes it. */
export function pointText(plan: IterationPlan): string {
  const { name, ...rest } = plan.point!;
  return formatCrashPlan({ point: name, ...rest });
}
