import fs from 'node:fs';
import { type Clock, systemClock } from '../sys/clock.js';
import { type CutReport, PowerCutRegistry } from './power-cut-device.js';

/**
 * Places in the server where a crash is most likely to expose a bug. A
 * configured point ends the process on the spot when reached for the chosen
 * time: `kill` as kill -9 would, `power-cut` after the power-cut devices have
 * rolled back what their disks would lose.
 */
export const crashPointNames = [
  /** The region's bit is durable in the log; no leg has the data yet. */
  'mirror.after-log-dirty',
  /** One leg has the write, the others may not. */
  'mirror.between-legs',
  /** The sweeper picked its clean candidates, nothing synced yet. */
  'sweeper.after-candidates',
  /** Every leg synced; the candidates' bits are still set on disk. */
  'sweeper.after-sync',
  /** The log copy with the cleared bits is written but not yet synced. */
  'regionlog.clearing-bits',
  /** Resync read a chunk from the source leg and has not written it to the others. */
  'resync.between-read-and-write',
  /** A checkpoint file's new version is written and synced under its temporary name, not yet renamed into place. */
  'checkpoint.before-rename',
  /** The checkpoint file is renamed into place; the folder is not yet synced and the caller not yet answered. */
  'checkpoint.after-rename',
] as const;

/**
 * The points a crash-test workload reaches while it runs, which the planner
 * draws from; the checkpoint points are reached by checkpoint commands and
 * are armed by hand (`--crash-point`).
 */
export const workloadCrashPointNames = crashPointNames.filter((name) => !name.startsWith('checkpoint.'));

export type CrashPointName = typeof crashPointNames[number];
export type CrashAction = 'kill' | 'power-cut';

export interface CrashPlan {
  point: CrashPointName;
  /** Crash the nth time the point is reached (1: the first), counting from afterMs. */
  hit: number;
  /**
   * Hits before this many milliseconds since arming do not count. How often a
   * point is reached depends on the workload (a sweeper point a few times a
   * second, a per-write point thousands of times), so a time says "crash
   * mid-workload" for any point where a hit count alone would not.
   */
  afterMs: number;
  action: CrashAction;
}

/**
 * The crash points of one server, and the power-cut devices a crash cuts.
 * Whoever composes the stack makes one and hands it to the layers that have
 * points; nothing is a module global, so two servers (or tests) in one
 * process never arm each other's points.
 */
export class CrashPoints {
  /** Whether a point is armed: hot paths test this field and skip even the call. */
  armed = false;
  private plan: CrashPlan | undefined;
  private hits = 0;
  private armedAtMs = 0;

  constructor(readonly powerCuts: PowerCutRegistry = new PowerCutRegistry(), private readonly clock: Clock = systemClock) {}

  arm(next: CrashPlan | undefined): void {
    this.plan = next;
    this.armed = next !== undefined;
    this.hits = 0;
    this.armedAtMs = this.clock.now();
  }

  /**
   * Called at each named place. Unarmed, it costs one comparison and returns
   * undefined, so the normal path never awaits; armed and due, the returned
   * promise never settles, because the process is gone before it could.
   */
  reach(name: CrashPointName): Promise<never> | undefined {
    const { plan } = this;
    if (plan === undefined || plan.point !== name) return undefined;
    if (plan.afterMs > 0 && this.clock.now() - this.armedAtMs < plan.afterMs) return undefined;
    this.hits += 1;
    if (this.hits !== plan.hit) return undefined;
    this.arm(undefined);
    return this.crashNow(`crash point ${name}`, plan.action);
  }

  /**
   * Ends the process as a crash would. The one line written first (to stdout,
   * synchronously, as JSON like our logs) tells a harness what happened and,
   * after a power cut, how many sectors each device kept and dropped.
   */
  crashNow(reason: string, action: CrashAction): Promise<never> {
    const announce = (reports: CutReport[]): void => {
      const line = JSON.stringify({ level: 60, time: Date.now(), msg: 'crash injected', reason, action, powerCut: reports });
      try {
        fs.writeSync(1, `${line}\n`);
      } catch {
        // Nobody is listening: the crash still happens.
      }
      process.kill(process.pid, 'SIGKILL');
    };
    if (action === 'kill') announce([]);
    else void this.powerCuts.cutAll().then(announce, () => announce([]));
    return new Promise<never>(() => {});
  }
}

export function parseCrashPlan(text: string, key: string): CrashPlan {
  // point[@hit][+ms][:action], e.g. sweeper.after-sync@3:power-cut, mirror.between-legs+800:kill
  const match = /^([a-z.-]+)(?:@(\d+))?(?:\+(\d+))?(?::(kill|power-cut))?$/.exec(text);
  if (!match || !(crashPointNames as readonly string[]).includes(match[1])) {
    throw new Error(`${key}: "${text}" is not point[@hit][+ms][:kill|power-cut] with point one of ${crashPointNames.join(', ')}`);
  }
  const hit = match[2] === undefined ? 1 : Number(match[2]);
  if (!(hit >= 1)) throw new Error(`${key}: the hit count must be at least 1`);
  const afterMs = match[3] === undefined ? 0 : Number(match[3]);
  return { point: match[1] as CrashPointName, hit, afterMs, action: (match[4] as CrashAction | undefined) ?? 'kill' };
}

/** The text parseCrashPlan reads back into the same plan. */
export function formatCrashPlan(crash: { point: string; hit: number; afterMs: number; action: CrashAction }): string {
  return `${crash.point}@${crash.hit}${crash.afterMs > 0 ? `+${crash.afterMs}` : ''}:${crash.action}`;
}
