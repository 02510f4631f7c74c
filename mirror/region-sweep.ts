import type { Logger } from 'pino';
import { type BlockError, toBlockError } from '../blockdev/errors.js';
import type { EventSink } from '../blockdev/events.js';
import type { CrashPoints } from '../faults/crash-points.js';
import type { RegionLog } from '../regionlog/region-log.js';
import type { RegionTracker } from './region-tracker.js';

export interface SweepResult {
  candidates: number;
  cleared: number;
  synced: boolean;
}

/** What the sweep needs from the mirror it sweeps. */
export interface SweepTarget {
  readonly regions: RegionTracker;
  readonly log: RegionLog;
  readonly crashPoints: CrashPoints;
  readonly events: EventSink;
  readonly logger: Logger;
  readonly stats: { sweeps: number; regionsCleared: number };
  readonly isClosed: boolean;
  /** Every leg in the log is in sync: only then may bits be cleared. */
  readonly fullyInSync: boolean;
  flush(): Promise<void>;
  enterFailed(error: BlockError): void;
  /** Made durable before any bit is cleared (checkpoints' changed blocks); a rejection clears none. */
  readonly beforeClearingBits: (() => Promise<void>) | undefined;
}

/**
 * The clean-candidate sweep (lesson 1, docs/region-log.md): quiet regions
 * become candidates, every leg is synced, and only candidates no write
 * touched meanwhile are cleared. Nothing is cleared while a leg is missing,
 * being rebuilt, or if the sync failed. One sweep runs at a time; a sweep
 * asked for while one runs shares it.
 */
export class RegionSweep {
  private sweeping: Promise<SweepResult> | undefined;

  constructor(private readonly mirror: SweepTarget, private readonly quietSweepsBeforeClean: number) {}

  /** The sweep running now, if any. */
  get inProgress(): Promise<SweepResult> | undefined {
    return this.sweeping;
  }

  run(options: { ignoreQuietPasses?: boolean } = {}): Promise<SweepResult> {
    this.sweeping ??= this.once(options.ignoreQuietPasses ? 0 : this.quietSweepsBeforeClean)
      .finally(() => { this.sweeping = undefined; });
    return this.sweeping;
  }

  private async once(quietSweepsRequired: number): Promise<SweepResult> {
    const { mirror } = this;
    if (mirror.isClosed || !mirror.fullyInSync) return { candidates: 0, cleared: 0, synced: false };
    const candidates = mirror.regions.beginSweep(quietSweepsRequired);
    if (candidates.length === 0) return { candidates: 0, cleared: 0, synced: false };
    if (mirror.crashPoints.armed) await mirror.crashPoints.reach('sweeper.after-candidates');
    let synced = false;
    try {
      await mirror.flush();
      if (mirror.crashPoints.armed) await mirror.crashPoints.reach('sweeper.after-sync');
      // What is recorded elsewhere on the strength of these bits (checkpoints' changed blocks) is made durable
      // before any of them is cleared: after a crash the bits still set are what the records may have missed.
      if (mirror.beforeClearingBits) await mirror.beforeClearingBits();
      synced = mirror.fullyInSync;
    } catch (error) {
      mirror.logger.warn({ err: (error as Error).message, candidates: candidates.length }, 'sweep sync failed: no bit cleared');
    }
    const cleared = mirror.regions.finishSweep(candidates, synced);
    mirror.stats.sweeps += 1;
    mirror.stats.regionsCleared += cleared;
    if (cleared > 0) {
      await mirror.log.commit().catch((error: unknown) => mirror.enterFailed(toBlockError(error, 'region log update')));
      mirror.events({ event: 'sweep', candidates: candidates.length, cleared });
    }
    return { candidates: candidates.length, cleared, synced };
  }
}
