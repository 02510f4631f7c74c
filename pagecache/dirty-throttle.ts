import assert from 'node:assert/strict';
import { BlockError } from '../blockdev/errors.js';
import type { Clock, ClockTimer } from '../sys/clock.js';
import type { PageTable } from './page-table.js';

export type NoSpacePolicy = 'error' | 'queue';

export interface ThrottleOptions {
  dirtyLimitBytes: number;
  /** See PageCacheOptions.noSpacePolicy. */
  noSpacePolicy: NoSpacePolicy;
  noSpaceTimeoutMs: number;
  /** Throttled writers re-check at least this often (1 s when 0). */
  writebackIntervalMs: number;
}

/** What the throttle needs from the cache it guards. */
export interface ThrottleHost {
  /** Set while writeback keeps failing with a retryable error (a full pool). */
  readonly noSpace: BlockError | undefined;
  /** Starts writing back about `bytes` of the oldest dirty pages. */
  startBackground(bytes: number): void;
  /** Throws if the cache failed or closed while a writer waited. */
  checkUsable(what: string): void;
  readonly stats: { throttledWrites: number; noSpaceRejects: number };
}

/**
 * Bounds dirty memory: writers that would take it past the limit wait for
 * writeback progress (balance_dirty_pages, in the kernel's terms), and while
 * writeback keeps failing with a retryable error they get ENOSPC, at once or
 * after the queue timeout, and are never acknowledged.
 */
export class DirtyThrottle {
  /** Dirty bytes promised to writers that passed the throttle but have not applied yet. */
  private reservedBytes = 0;
  private progress: { promise: Promise<void>; wake: () => void; deadlineMs: number; timer: ClockTimer } | undefined;

  constructor(private readonly pages: PageTable, private readonly host: ThrottleHost, private readonly options: ThrottleOptions,
    private readonly clock: Clock) {}

  /**
   * Waits until pages [first, last] may become dirty; returns the bytes
   * reserved for them, to give back with release() once applied (or not).
   * Overwriting pages that are already dirty needs no room.
   */
  async makeRoom(first: number, last: number): Promise<number> {
    const limit = this.options.dirtyLimitBytes;
    let waitedSinceMs: number | undefined;
    let throttled = false;
    for (;;) {
      let newDirty = 0;
      for (let index = first; index <= last; index += 1) if (!this.pages.isDirty(index)) newDirty += this.pages.pageBytes;
      const committed = this.pages.dirtyBytes + this.reservedBytes;
      // A write larger than the whole limit goes in once nothing else is dirty.
      if (newDirty === 0 || committed + newDirty <= limit || committed === 0) {
        // Reserved until applied, so concurrent writers cannot all pass on the same reading.
        this.reservedBytes += newDirty;
        return newDirty;
      }
      const { noSpace } = this.host;
      if (noSpace) {
        // Out of space, the timer retries once per interval; hammering the device from here would not help.
        const timeoutMs = this.options.noSpacePolicy === 'queue' ? this.options.noSpaceTimeoutMs : 0;
        waitedSinceMs ??= this.clock.now();
        const remainingMs = timeoutMs - (this.clock.now() - waitedSinceMs);
        if (remainingMs <= 0) {
          this.host.stats.noSpaceRejects += 1;
          throw new BlockError('ENOSPC', `write refused: the cache is at its dirty limit (${limit} bytes) and writeback ` +
            `keeps failing (${noSpace.message})`, { retryable: true });
        }
        await this.nextProgress(remainingMs);
      } else {
        if (!throttled) this.host.stats.throttledWrites += 1;
        throttled = true;
        this.host.startBackground(committed + newDirty - limit);
        waitedSinceMs = undefined;
        await this.nextProgress(this.options.writebackIntervalMs || 1000);
      }
      this.host.checkUsable('write');
    }
  }

  release(reservedBytes: number): void {
    this.reservedBytes -= reservedBytes;
    if (this.reservedBytes < 0) assert.fail(`dirty reservations went negative (${this.reservedBytes})`);
  }

  /**
   * Resolves at the next writeback progress, or after `timeoutMs` at the
   * latest. Every waiting writer shares one promise and one timer (set to the
   * earliest deadline): at the dirty limit each completed writeback wakes
   * every throttled writer, and a timer per writer per wake-up made that
   * cost grow with the queue depth.
   */
  private nextProgress(timeoutMs: number): Promise<void> {
    const deadlineMs = this.clock.now() + timeoutMs;
    if (this.progress === undefined) {
      let wake!: () => void;
      const promise = new Promise<void>((resolve) => { wake = resolve; });
      this.progress = { promise, wake, deadlineMs, timer: this.clock.setTimeout(() => this.progressMade(), timeoutMs) };
    } else if (deadlineMs < this.progress.deadlineMs) {
      this.progress.timer.cancel();
      this.progress.deadlineMs = deadlineMs;
      this.progress.timer = this.clock.setTimeout(() => this.progressMade(), timeoutMs);
    }
    return this.progress.promise;
  }

  /** Writeback finished something (or the cache failed or closed): waiting writers look again. */
  progressMade(): void {
    const progress = this.progress;
    if (progress === undefined) return;
    this.progress = undefined;
    progress.timer.cancel();
    progress.wake();
  }
}
