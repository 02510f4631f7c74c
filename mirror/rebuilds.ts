import type { Logger } from 'pino';
import type { LegSpec } from '../backends/leg-spec.js';
import type { EventSink } from '../blockdev/events.js';
import { stampLeg } from './assemble.js';
import type { MirrorLeg } from './generation.js';
import { applyLegEvent } from './leg-states.js';
import type { MirrorDevice } from './mirror-device.js';
import type { ResyncEngine } from './resync.js';

/**
 * Bringing legs back into sync: a leg re-added from the bitmap is promoted
 * once no region is out of sync; a replaced (or forced) leg is rebuilt in
 * full by the resync engine, from a checkpoint kept in the log, then
 * promoted. Promotion stamps the leg's label and moves its state through the
 * leg lifecycle table (caught_up).
 */
export class Rebuilds {
  /** The full rebuild running now, if any. */
  running: Promise<void> | undefined;

  constructor(private readonly device: MirrorDevice, private readonly resync: ResyncEngine, private readonly legSpecs: readonly LegSpec[],
    private readonly logger: Logger, private readonly events: EventSink, private readonly stopping: () => boolean) {}

  /** Legs re-added from the bitmap become in sync once no region is out of sync. */
  async promoteBitmapRebuilds(): Promise<void> {
    const { log } = this.device;
    for (const [slot, record] of log.state.legs.entries()) {
      if (record.state !== 'rebuilding' || record.rebuildMode !== 'bitmap') continue;
      const leg = this.device.generation.legs[slot];
      if (!leg) continue;
      try {
        await leg.device.flush();
        await this.bringInSync(slot, leg);
        this.logger.info({ slot, path: leg.path }, 're-add complete: leg in sync');
      } catch (error) {
        this.logger.error({ slot, err: (error as Error).message }, 're-add could not finish');
      }
    }
  }

  private async bringInSync(slot: number, leg: MirrorLeg): Promise<void> {
    const { log } = this.device;
    const record = log.state.legs[slot];
    await stampLeg(this.legSpecs[slot], log.state, slot, log.state.eventsCurrent, leg.remote);
    // The failure is history once the leg is back (failedAtMs cleared): status must not show it against an in-sync leg.
    applyLegEvent(record, 'caught_up', { events: log.state.eventsCurrent });
    await log.commit();
    this.device.replaceGeneration(this.device.generation.legs);
    this.events({ event: 'leg-in-sync', slot, path: leg.path });
  }

  /** Starts (or resumes from its checkpoint) the full rebuild of a leg; one runs at a time. */
  startFull(slot: number): void {
    const run = async (): Promise<void> => {
      const { log } = this.device;
      const record = log.state.legs[slot];
      const leg = this.device.generation.legs[slot];
      if (!leg) return;
      const regionSize = log.state.regionSizeBytes;
      this.logger.info({ slot, path: leg.path, fromBytes: record.rebuildCheckpointBytes }, 'full rebuild started');
      await this.resync.rebuild(leg, Math.floor(record.rebuildCheckpointBytes / regionSize), async (nextRegion) => {
        record.rebuildCheckpointBytes = Math.min(nextRegion * regionSize, log.state.deviceSizeBytes);
        await log.commit();
      });
      if (log.state.legs[slot].state !== 'rebuilding' || this.device.generation.legs[slot] !== leg) return;
      await this.resync.idle();
      if (this.device.regions.outOfSyncRegions > 0) {
        // Regions written out of sync meanwhile are copied by the resync pass; wait for it.
        this.resync.kick();
        await this.resync.idle();
      }
      await leg.device.flush();
      await this.bringInSync(slot, leg);
      this.logger.info({ slot, path: leg.path }, 'full rebuild complete: leg in sync');
    };
    this.running = run().catch((error: unknown) => {
      if (!this.stopping()) this.logger.error({ slot, err: (error as Error).message }, 'full rebuild stopped');
    }).finally(() => { this.running = undefined; });
  }
}
