import type { Logger } from 'pino';
import { errorAction } from '../blockdev/error-policy.js';
import { alignDown, alignUp } from '../blockdev/range.js';
import { BlockError, toBlockError } from '../blockdev/errors.js';
import type { EventSink } from '../blockdev/events.js';
import { type BlockDevice, type DeviceCapabilities, type Extent, finishedNow, type WriteFlags, type ZeroFlags } from '../blockdev/types.js';
import { type Clock, type ClockTimer, systemClock } from '../sys/clock.js';
import { DirtyThrottle, type NoSpacePolicy } from './dirty-throttle.js';
import { overlayData } from './extent-overlay.js';
import { type Page, PageTable } from './page-table.js';
import { RangeGate } from './range-gate.js';
import { StraightBelow } from './straight-below.js';
import { WriteAroundPolicy } from './write-around-policy.js';
import { Writeback } from './writeback.js';

export type { NoSpacePolicy } from './dirty-throttle.js';


export interface PageCacheOptions {
  /** Memory cap for cached pages, clean and dirty. */
  capacityBytes: number;
  /** Dirty bytes above which writers wait for writeback. */
  dirtyLimitBytes: number;
  /** Dirty pages older than this are written back in the background. */
  dirtyExpireMs: number;
  writebackIntervalMs: number;
  /**
   * At the dirty limit while writeback keeps failing with a retryable error:
   * 'error' fails new writes with ENOSPC at once, 'queue' lets them wait up
   * to noSpaceTimeoutMs for space first (dm-thin's error_if_no_space and
   * queue_if_no_space with no_space_timeout).
   */
  noSpacePolicy: NoSpacePolicy;
  noSpaceTimeoutMs: number;
  logger: Logger;
  /** Where ENOSPC during writeback and a fatal failure are reported. */
  events?: EventSink;
  pageBytes?: number;
  /**
   * Writes of at least this many bytes go straight to the device below
   * instead of into pages (their whole pages; a partial page at either end
   * is cached): a large write gains nothing from the cache and paid a copy,
   * 256 page updates per MiB and a second copy into a writeback snapshot.
   * Smaller whole-page writes go around while the cache is busy unless
   * caching them saves work (write-around-policy.ts).
   * 0 or absent: every write is cached.
   */
  writeAroundBytes?: number;
  /** Time for dirty expiry, the writeback interval and the no-space wait (tests step it). */
  clock?: Clock;
}

/** The cache's timing settings (cache.dirtyExpireMs, cache.writebackIntervalMs, cache.noSpaceTimeoutMs). */
export const dirtyExpireBounds = { min: 0, max: 3_600_000, default: 5000 };
export const writebackIntervalBounds = { min: 10, max: 60_000, default: 500 };
export const noSpaceTimeoutBounds = { min: 0, max: 3_600_000, default: 60_000 };
/** cache.writeAroundSize: 64 KiB, where 64 KiB random writes through the cache ran at 0.4x the same mirror without it. */
export const writeAroundBytesDefault = 64 * 1024;

export interface PageCacheStatus {
  cachedBytes: number;
  /** Page memory taken from the system (slabs), used or free. */
  allocatedBytes: number;
  dirtyBytes: number;
  capacityBytes: number;
  dirtyLimitBytes: number;
  /** The last writeback (or small write around) failed with a retryable error and no writeback succeeded since. */
  noSpace?: string;
  failed?: string;
  stats: PageCache['stats'];
}

/**
 * A write-back page cache over any block device (the mirror, or one leg).
 *
 * Writes are copied into pages and acknowledged; FUA writes are written back
 * and durable before the reply. Writeback sends a snapshot taken when it
 * starts, and a page changed meanwhile stays dirty (lesson 1). A failed
 * writeback never drops a page: a retryable failure (ENOSPC) keeps it dirty,
 * readable and retried by the next flush; a fatal one fails the whole device
 * until an operator acts, so no flush can ever succeed over lost data
 * (lesson 3).
 *
 * This file is the request path (read, write, trim, flush); the pages and
 * their states are page-table.ts, writeback is writeback.ts, and the dirty
 * limit is dirty-throttle.ts.
 */
export class PageCache implements BlockDevice {
  readonly sizeBytes: number;
  readonly blockSizeBytes: number;
  readonly capabilities: DeviceCapabilities;
  readonly pageBytes: number;
  private readonly pages: PageTable;
  private readonly gate = new RangeGate();
  private readonly throttle: DirtyThrottle;
  private readonly writeback: Writeback;
  private readonly straightBelow: StraightBelow;
  private readonly writeAround: WriteAroundPolicy;
  private failure: BlockError | undefined;
  private isClosed = false;
  private timer: ClockTimer | undefined;
  private readonly clock: Clock;
  readonly stats = {
    readHits: 0, readMisses: 0, writes: 0, writebacks: 0, writebackBytes: 0, writebackFailures: 0,
    throttledWrites: 0, noSpaceRejects: 0, evictions: 0, writesAround: 0, bytesWrittenAround: 0, smallWritesAround: 0,
  };

  constructor(readonly below: BlockDevice, private readonly options: PageCacheOptions) {
    this.sizeBytes = below.sizeBytes;
    this.blockSizeBytes = below.blockSizeBytes;
    this.pageBytes = options.pageBytes ?? 4096;
    if (options.dirtyLimitBytes > options.capacityBytes) {
      throw new BlockError('EINVAL', `cache dirty limit ${options.dirtyLimitBytes} exceeds its capacity ${options.capacityBytes}`);
    }
    // One cache serves every connection, so a flush on any covers all writes.
    this.capabilities = { ...below.capabilities, flush: true, fua: true, multiConn: true };
    this.clock = options.clock ?? systemClock;
    this.pages = new PageTable(this.pageBytes, this.sizeBytes);
    const cache = this;
    this.writeback = new Writeback(this.pages, below, this.gate, {
      checkUsable: (what) => this.checkUsable(what),
      enterFailed: (error) => this.enterFailed(error),
      flushBelow: () => this.flushBelow(),
      runFinished: () => {
        this.throttle.progressMade();
        this.evictIfNeeded();
      },
      get failed() { return cache.failure; },
      get closed() { return cache.isClosed; },
      stats: this.stats,
    }, options, this.clock);
    this.throttle = new DirtyThrottle(this.pages, {
      get noSpace() { return cache.writeback.noSpace; },
      startBackground: (bytes) => this.writeback.startBackground(bytes),
      checkUsable: (what) => this.checkUsable(what),
      stats: this.stats,
    }, options, this.clock);
    this.straightBelow = new StraightBelow(this.pages, below, this.gate, {
      checkUsable: (what) => this.checkUsable(what),
      enterFailed: (error) => this.enterFailed(error),
      progressMade: () => this.throttle.progressMade(),
      stats: this.stats,
    }, this.clock);
    this.writeAround = new WriteAroundPolicy(this.pages, {
      writeAroundBytes: options.writeAroundBytes ?? 0, dirtyLimitBytes: options.dirtyLimitBytes, clock: this.clock,
    });
    this.scheduleBackgroundWriteback();
  }

  private scheduleBackgroundWriteback(): void {
    if (this.isClosed || !(this.options.writebackIntervalMs > 0)) return;
    this.timer = this.clock.setTimeout(() => {
      this.scheduleBackgroundWriteback();
      this.writeback.expire();
    }, this.options.writebackIntervalMs, { unref: true });
  }

  get dirtyBytes(): number {
    return this.pages.dirtyBytes;
  }

  get cachedBytes(): number {
    return this.pages.cachedBytes;
  }

  get failed(): BlockError | undefined {
    return this.failure;
  }

  status(): PageCacheStatus {
    return {
      cachedBytes: this.cachedBytes,
      allocatedBytes: this.pages.allocatedBytes,
      dirtyBytes: this.dirtyBytes,
      capacityBytes: this.options.capacityBytes,
      dirtyLimitBytes: this.options.dirtyLimitBytes,
      noSpace: this.writeback.noSpace?.message,
      failed: this.failure?.message,
      stats: { ...this.stats },
    };
  }

  private checkUsable(what: string): void {
    if (this.isClosed) throw new BlockError('ESHUTDOWN', `${what}: the cache is closed`);
    if (this.failure) {
      throw new BlockError('EIO', `${what}: the device has failed (${this.failure.message}); an operator must act`, { retryable: false });
    }
  }

  read(offsetBytes: number, target: Buffer): Promise<void> {
    try {
      this.checkUsable('read');
    } catch (error) {
      return Promise.reject(error);
    }
    if (target.length === 0) return finishedNow;
    const [first, last] = this.pages.pagesOf(offsetBytes, target.length);
    if (this.pages.noneCachedIn(first, last)) {
      // Nothing cached: the read is the device's, and a read it finishes at once (a page-cache hit
      // on the event loop) stays finished at once, so the reply goes out in the same turn.
      this.stats.readMisses += 1;
      return this.below.read(offsetBytes, target);
    }
    return this.readThrough(offsetBytes, target, first, last);
  }

  private async readThrough(offsetBytes: number, target: Buffer, first: number, last: number): Promise<void> {
    // Pages are captured now: one written back and evicted while we read below
    // still supplies its bytes, so a read never goes back to older data.
    const captured: Page[] = [];
    const missing: Array<[number, number]> = [];
    for (let index = first; index <= last; index += 1) {
      const page = this.pages.get(index);
      if (page && !page.loading) {
        page.readers += 1;
        captured.push(page);
        continue;
      }
      const run = missing[missing.length - 1];
      if (run && run[1] === index - 1) run[1] = index;
      else missing.push([index, index]);
    }
    try {
      if (missing.length > 0) {
        this.stats.readMisses += 1;
        const end = offsetBytes + target.length;
        // One read from the first missing page to the last, cached pages between included (they are copied
        // over it below): reads around scattered cached pages were split into a request per gap, and a
        // 1 MiB read over pages left by random 4k writes went at a quarter of the speed of one request.
        const start = Math.max(offsetBytes, missing[0][0] * this.pageBytes);
        const stop = Math.min(end, (missing[missing.length - 1][1] + 1) * this.pageBytes);
        await this.below.read(start, target.subarray(start - offsetBytes, stop - offsetBytes));
      } else {
        this.stats.readHits += 1;
      }
      for (const page of captured) this.copyOut(page, offsetBytes, target);
    } finally {
      for (const page of captured) this.pages.readDone(page);
    }
  }

  private copyOut(page: Page, offsetBytes: number, target: Buffer): void {
    const pageStart = page.index * this.pageBytes;
    const from = Math.max(offsetBytes, pageStart);
    const to = Math.min(offsetBytes + target.length, pageStart + page.data.length);
    page.data.copy(target, from - offsetBytes, from - pageStart, to - pageStart);
  }

  /**
   * Not itself async: a small write that goes around the cache answers
   * finishedNow when the device below finished it in the turn (see
   * StraightBelow.writeAround), as most writes of a busy cache do.
   */
  write(offsetBytes: number, data: Buffer, flags: WriteFlags): Promise<void> {
    try {
      this.checkUsable('write');
    } catch (error) {
      return Promise.reject(error);
    }
    if (data.length === 0) return finishedNow;
    const end = offsetBytes + data.length;
    if (this.writeAround.isLarge(data.length)) {
      const aroundStart = alignUp(offsetBytes, this.pageBytes);
      const aroundEnd = end === this.sizeBytes ? end : alignDown(end, this.pageBytes);
      // Whole pages (the usual large write) go down as they are, and finish in the turn when the device below does.
      if (aroundStart === offsetBytes && aroundEnd === end) return this.straightBelow.writeAround(offsetBytes, data, flags);
      if (aroundEnd > aroundStart) return this.writeAroundWithEnds(offsetBytes, data, flags, aroundStart, aroundEnd);
    }
    const [first, last] = this.pages.pagesOf(offsetBytes, data.length);
    const wholePages = offsetBytes % this.pageBytes === 0 && (end % this.pageBytes === 0 || end === this.sizeBytes);
    if (wholePages && this.writeAround.smallWriteGoesAround(first, last, this.writeback.noSpace !== undefined)) {
      this.stats.smallWritesAround += 1;
      const around = this.straightBelow.writeAround(offsetBytes, data, flags);
      if (around === finishedNow) return finishedNow;
      return around.catch((error: unknown) => {
        const failure = toBlockError(error, `write at ${offsetBytes}`);
        if (!failure.retryable) throw failure;
        // Out of space below: this write is cached after all, as small writes were before the device filled,
        // and writeback's no-space state keeps the next ones in the cache under the no-space policy.
        this.writeback.retryableFailureBelow(failure);
        return this.writeCached(offsetBytes, data, flags, first, last);
      });
    }
    return this.writeCached(offsetBytes, data, flags, first, last);
  }

  private async writeCached(offsetBytes: number, data: Buffer, flags: WriteFlags, first: number, last: number): Promise<void> {
    const reserved = await this.throttle.makeRoom(first, last);
    try {
      await this.fillAndApply(offsetBytes, data, first, last);
    } finally {
      this.throttle.release(reserved);
    }
    if (flags.fua) await this.writeback.writeBack(this.pages.dirtyIndicesIn(first, last), true);
  }

  /** The whole pages go around the cache; a partial page at either end is cached (only whole pages can be superseded below). */
  private async writeAroundWithEnds(offsetBytes: number, data: Buffer, flags: WriteFlags, aroundStart: number, aroundEnd: number):
    Promise<void> {
    const end = offsetBytes + data.length;
    const parts = [this.straightBelow.writeAround(aroundStart, data.subarray(aroundStart - offsetBytes, aroundEnd - offsetBytes), flags)];
    if (aroundStart > offsetBytes) parts.push(this.write(offsetBytes, data.subarray(0, aroundStart - offsetBytes), flags));
    if (end > aroundEnd) parts.push(this.write(aroundEnd, data.subarray(aroundEnd - offsetBytes), flags));
    await Promise.all(parts);
  }

  private async fillAndApply(offsetBytes: number, data: Buffer, first: number, last: number): Promise<void> {
    const end = offsetBytes + data.length;
    for (;;) {
      // A trim, write-zeroes or write around of the range in flight goes first: this write lands after it.
      const straight = this.gate.blocking(offsetBytes, end);
      if (straight !== undefined) {
        await straight;
        this.checkUsable('write');
        continue;
      }
      const waits = this.pendingFills(offsetBytes, data.length, first, last);
      if (waits.length === 0) break;
      const failed = (await Promise.allSettled(waits)).find((result) => result.status === 'rejected');
      if (failed) throw toBlockError((failed as PromiseRejectedResult).reason, `write at ${offsetBytes}: reading the rest of a page`);
      this.checkUsable('write');
    }
    // From here to the end of the loop nothing awaits: the change is atomic for readers.
    this.pages.seq += 1;
    this.stats.writes += 1;
    const now = this.clock.now();
    for (let index = first; index <= last; index += 1) {
      const page = this.pages.get(index) ?? this.pages.newPage(index);
      const pageStart = index * this.pageBytes;
      const from = Math.max(offsetBytes, pageStart);
      const to = Math.min(offsetBytes + data.length, pageStart + page.data.length);
      data.copy(page.data, from - pageStart, from - offsetBytes, to - offsetBytes);
      this.pages.markDirty(page, now);
    }
    this.evictIfNeeded();
  }

  /**
   * Pages the write covers only in part must first be read from below: the
   * fills still to wait for (none means the write can be applied now, in the
   * same turn, before anything evicts or changes those pages).
   */
  private pendingFills(offsetBytes: number, lengthBytes: number, first: number, last: number): Array<Promise<void>> {
    const end = offsetBytes + lengthBytes;
    const waits: Array<Promise<void>> = [];
    for (let index = first; index <= last; index += 1) {
      const page = this.pages.get(index);
      if (page?.loading) {
        waits.push(page.loading);
        continue;
      }
      if (page) continue;
      const pageStart = index * this.pageBytes;
      const covered = offsetBytes <= pageStart && end >= pageStart + this.pages.pageLength(index);
      if (!covered) waits.push(this.startLoad(index));
    }
    return waits;
  }

  private startLoad(index: number): Promise<void> {
    const page = this.pages.newPage(index);
    const start = index * this.pageBytes;
    page.loading = (async () => {
      try {
        const end = start + page.data.length;
        for (let wait = this.gate.blocking(start, end); wait !== undefined; wait = this.gate.blocking(start, end)) await wait;
        page.loadingPastGate = true;
        await this.below.read(start, page.data);
        this.pages.loaded(page);
      } catch (error) {
        this.pages.drop(page);
        throw error;
      } finally {
        page.loading = undefined;
        page.loadingPastGate = false;
      }
    })();
    return page.loading;
  }

  enterFailed(error: BlockError): void {
    if (this.failure) return;
    this.failure = error;
    this.options.logger.fatal({ err: error.message, dirtyBytes: this.dirtyBytes },
      'cache writeback failed fatally: the device answers EIO until an operator acts (restart after fixing the legs)');
    this.options.events?.({ event: 'cache-failed', message: error.message });
    this.throttle.progressMade();
  }

  /** Writes back every page dirty now; rejects if any fails. Used by flush and by the sweeper's sync. */
  async writeBackAll(): Promise<void> {
    this.checkUsable('writeback');
    await this.writeback.writeBack(this.pages.dirtyIndices(), false);
  }

  /**
   * Everything acknowledged before this call is written back, then the device
   * below flushes. A failure leaves every unwritten page dirty and readable.
   */
  async flush(): Promise<void> {
    this.checkUsable('flush');
    this.writeAround.flushStarting();
    await this.writeBackAll();
    await this.flushBelow();
    this.checkUsable('flush');
  }

  /** A fatal flush failure below means written data may be gone: the cache fails as for a fatal writeback. */
  private async flushBelow(): Promise<void> {
    try {
      await this.below.flush();
    } catch (error) {
      const failure = toBlockError(error, 'flush below the cache');
      if (errorAction('cache-flush-below', failure) !== 'fail-cache') throw failure;
      this.enterFailed(failure);
      throw new BlockError('EIO', `flush failed: ${failure.message}`, { retryable: false });
    }
  }

  trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void> {
    return this.supersede('trim', offsetBytes, lengthBytes, () => this.below.trim(offsetBytes, lengthBytes, flags));
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    return this.supersede('write-zeroes', offsetBytes, lengthBytes, () => this.below.writeZeroes(offsetBytes, lengthBytes, flags));
  }

  private async supersede(what: string, offsetBytes: number, lengthBytes: number, apply: () => Promise<void>): Promise<void> {
    this.checkUsable(what);
    if (lengthBytes === 0) return;
    await this.straightBelow.supersede(what, offsetBytes, lengthBytes, apply);
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    this.checkUsable('block-status');
    const extents = await this.below.blockStatus(offsetBytes, lengthBytes);
    const [first, last] = this.pages.pagesOf(offsetBytes, lengthBytes);
    const ranges: Array<[number, number]> = [];
    for (const index of this.pages.dirtyIndicesIn(first, last)) {
      const start = Math.max(offsetBytes, index * this.pageBytes);
      const stop = Math.min(offsetBytes + lengthBytes, (index + 1) * this.pageBytes);
      const previous = ranges[ranges.length - 1];
      if (previous && previous[1] === start) previous[1] = stop;
      else ranges.push([start, stop]);
    }
    return overlayData(extents, ranges);
  }

  /** Drops every clean page (memory pressure); dirty pages always stay. */
  shrink(): number {
    const dropped = this.pages.dropClean();
    this.stats.evictions += dropped;
    return dropped;
  }

  private evictIfNeeded(): void {
    this.stats.evictions += this.pages.evictTo(Math.floor(this.options.capacityBytes / this.pageBytes));
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    this.timer?.cancel();
    this.throttle.progressMade();
    await this.writeback.backgroundRun;
    await this.below.close();
  }
}
