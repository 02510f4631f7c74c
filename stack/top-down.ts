import type { Logger } from 'pino';
import type { MirrorController } from '../mirror/controller.js';
import type { SweepResult } from '../mirror/mirror-device.js';
import type { PageCache } from '../pagecache/page-cache.js';
import { type Clock, type ClockTimer, systemClock } from '../sys/clock.js';

/** The layers of one export, top first: what the composition above the mirror drives. */
export interface StackLayers {
  cache?: PageCache;
  mirror?: MirrorController;
}

/**
 * One sweep, top-down: the cache writes back everything dirty, then the
 * mirror picks its quiet regions, syncs every leg and clears their bits
 * (lesson 1). Nothing below calls up: the mirror does not know a cache
 * exists. A writeback that fails (a full pool) clears nothing this time.
 */
export async function sweepTopDown(layers: StackLayers, options: { ignoreQuietPasses?: boolean; logger?: Logger } = {}): Promise<SweepResult> {
  if (!layers.mirror) return { candidates: 0, cleared: 0, synced: false };
  if (layers.cache) {
    try {
      await layers.cache.writeBackAll();
    } catch (error) {
      options.logger?.warn({ err: (error as Error).message }, 'sweep: cache writeback failed, no bit cleared');
      return { candidates: 0, cleared: 0, synced: false };
    }
  }
  return layers.mirror.device.sweep({ ignoreQuietPasses: options.ignoreQuietPasses });
}

/**
 * Clean stop, top-down: the cache writes back, then the mirror flushes, clears
 * what it may and marks its log clean, but only if the writeback succeeded
 * (data acknowledged to clients and still only in memory keeps the log unclean).
 */
export async function shutdownTopDown(layers: StackLayers, logger: Logger): Promise<void> {
  let upperFlushed = true;
  if (layers.cache && layers.cache.failed === undefined) {
    try {
      await layers.cache.writeBackAll();
    } catch (error) {
      upperFlushed = false;
      logger.error({ err: (error as Error).message }, 'shutdown: cache writeback failed; the log stays unclean');
    }
  }
  await layers.mirror?.shutdown({ upperFlushed });
}

/** The periodic sweep (storage.sweepIntervalMs), owned by the stack, not by the mirror. */
export class Sweeper {
  private timer: ClockTimer | undefined;
  private running: Promise<unknown> | undefined;
  private stopped = false;

  constructor(private readonly layers: StackLayers, private intervalMs: number, private readonly logger: Logger,
    private readonly clock: Clock = systemClock) {
    this.schedule();
  }

  /** Changes the interval from now on (0 stops sweeping); SIGHUP uses it. */
  setInterval(intervalMs: number): void {
    if (intervalMs === this.intervalMs) return;
    this.intervalMs = intervalMs;
    this.timer?.cancel();
    this.timer = undefined;
    this.schedule();
  }

  /** The sweep now running, if any (tests wait for it). */
  get inProgress(): Promise<unknown> | undefined {
    return this.running;
  }

  /** No new sweeps; waits for the one running. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.timer?.cancel();
    await this.running;
  }

  /** Every interval a sweep starts, unless the last one is still running (then this tick is skipped). */
  private schedule(): void {
    if (this.stopped || !(this.intervalMs > 0) || !this.layers.mirror) return;
    this.timer = this.clock.setTimeout(() => {
      this.schedule();
      if (this.running) return;
      this.running = sweepTopDown(this.layers, { logger: this.logger })
        .catch((error: unknown) => this.logger.error({ err: error }, 'sweep failed'))
        .finally(() => { this.running = undefined; });
    }, this.intervalMs, { unref: true });
  }
}
