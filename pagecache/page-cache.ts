import { errorAction } from '../blockdev/error-policy.js';
import type { EventSink } from '../blockdev/events.js';
import type { Logger } from 'pino';
import { BlockError, toBlockError } from '../blockdev/errors.js';
import { BufferPool } from '../blockdev/buffer-pool.js';
import { IntrusiveList, type ListNode } from '../blockdev/intrusive-list.js';
import type { BlockDevice, DeviceCapabilities, Extent, WriteFlags, ZeroFlags } from '../blockdev/types.js';
import { overlayData } from './extent-overlay.js';
import { PageSlab } from './page-slab.js';
import { RangeGate } from './range-gate.js';

export type NoSpacePolicy = 'error' | 'queue';

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
}

export interface PageCacheStatus {
  cachedBytes: number;
  /** Page memory taken from the system (slabs), used or free. */
  allocatedBytes: number;
  dirtyBytes: number;
  capacityBytes: number;
  dirtyLimitBytes: number;
  /** The last writeback failed with a retryable error and nothing succeeded since. */
  noSpace?: string;
  failed?: string;
  stats: PageCache['stats'];
}

interface Page extends ListNode<Page> {
  readonly index: number;
  data: Buffer;
  dirty: boolean;
  /** Bumped by every change; a writeback cleans the page only if it wrote this version. */
  version: number;
  /** Write sequence of the oldest change not yet written back. */
  firstUnwrittenSeq: number;
  /** Sequence of the first change made while a writeback of the page was in flight. */
  rewriteSeq: number | undefined;
  dirtiedAtMs: number;
  writeback: Promise<void> | undefined;
  /** Read-modify-write fill from below in progress; writers wait for it. */
  loading: Promise<void> | undefined;
  /** Reads copying out of this page: its memory is recycled only after they finish. */
  readers: number;
  dropped: boolean;
}

/** Runs are capped so 32 in flight hold at most 8 MiB of snapshots. */
const writebackRunBytesMax = 256 * 1024;
/** Random writes make one-page runs; this many keep the legs as busy as a client at QD32 would. */
const writebackRunsInFlight = 32;
/** Background writeback starts once dirty memory passes this share of the limit. */
const backgroundRatio = 0.5;

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
 */
export class PageCache implements BlockDevice {
  readonly sizeBytes: number;
  readonly blockSizeBytes: number;
  readonly capabilities: DeviceCapabilities;
  readonly pageBytes: number;
  private readonly pages = new Map<number, Page>();
  /** Clean pages, in the order they were read in or cleaned: eviction drops from the front. */
  private readonly cleanOrder = new IntrusiveList<Page>();
  /** Dirty pages, oldest first. */
  private readonly dirtyOrder = new IntrusiveList<Page>();
  private seq = 0;
  private readonly gate = new RangeGate();
  private readonly slab: PageSlab;
  /** Writeback snapshots, reused: they are short-lived and would otherwise churn the heap. */
  private readonly snapshots = new BufferPool(8 << 20, 4096);
  private progress: { promise: Promise<void>; wake: () => void; deadlineMs: number; timer: NodeJS.Timeout } | undefined;
  private noSpace: BlockError | undefined;
  /** The last request error writeback met (logged once, not at every retry). */
  private lastRefusal: string | undefined;
  /** Dirty bytes promised to writers that passed the throttle but have not applied yet. */
  private reservedBytes = 0;
  private failure: BlockError | undefined;
  private closed = false;
  private background: Promise<void> | undefined;
  private readonly timer: NodeJS.Timeout | undefined;
  readonly stats = {
    readHits: 0, readMisses: 0, writes: 0, writebacks: 0, writebackBytes: 0, writebackFailures: 0,
    throttledWrites: 0, noSpaceRejects: 0, evictions: 0,
  };

  constructor(readonly below: BlockDevice, private readonly options: PageCacheOptions) {
    this.sizeBytes = below.sizeBytes;
    this.blockSizeBytes = below.blockSizeBytes;
    this.pageBytes = options.pageBytes ?? 4096;
    this.slab = new PageSlab(this.pageBytes);
    if (options.dirtyLimitBytes > options.capacityBytes) {
      throw new BlockError('EINVAL', `cache dirty limit ${options.dirtyLimitBytes} exceeds its capacity ${options.capacityBytes}`);
    }
    // One cache serves every connection, so a flush on any covers all writes.
    this.capabilities = { ...below.capabilities, flush: true, fua: true, multiConn: true };
    if (options.writebackIntervalMs > 0) {
      this.timer = setInterval(() => this.backgroundWriteback(), options.writebackIntervalMs);
      this.timer.unref();
    }
  }

  get dirtyBytes(): number {
    return this.dirtyOrder.size * this.pageBytes;
  }

  get cachedBytes(): number {
    return this.pages.size * this.pageBytes;
  }

  get failed(): BlockError | undefined {
    return this.failure;
  }

  status(): PageCacheStatus {
    return {
      cachedBytes: this.cachedBytes,
      allocatedBytes: this.slab.allocatedBytes,
      dirtyBytes: this.dirtyBytes,
      capacityBytes: this.options.capacityBytes,
      dirtyLimitBytes: this.options.dirtyLimitBytes,
      noSpace: this.noSpace?.message,
      failed: this.failure?.message,
      stats: { ...this.stats },
    };
  }

  private checkUsable(what: string): void {
    if (this.closed) throw new BlockError('ESHUTDOWN', `${what}: the cache is closed`);
    if (this.failure) {
      throw new BlockError('EIO', `${what}: the device has failed (${this.failure.message}); an operator must act`, { retryable: false });
    }
  }

  private pageLength(index: number): number {
    return Math.min(this.pageBytes, this.sizeBytes - index * this.pageBytes);
  }

  private pagesOf(offsetBytes: number, lengthBytes: number): [number, number] {
    return [Math.floor(offsetBytes / this.pageBytes), Math.floor((offsetBytes + lengthBytes - 1) / this.pageBytes)];
  }

  async read(offsetBytes: number, target: Buffer): Promise<void> {
    this.checkUsable('read');
    if (target.length === 0) return;
    const [first, last] = this.pagesOf(offsetBytes, target.length);
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
        await Promise.all(missing.map(([from, to]) => {
          const start = Math.max(offsetBytes, from * this.pageBytes);
          const stop = Math.min(end, (to + 1) * this.pageBytes);
          return this.below.read(start, target.subarray(start - offsetBytes, stop - offsetBytes));
        }));
      } else {
        this.stats.readHits += 1;
      }
      for (const page of captured) this.copyOut(page, offsetBytes, target);
    } finally {
      for (const page of captured) {
        page.readers -= 1;
        if (page.readers === 0 && page.dropped) this.recycle(page);
      }
    }
  }

  private copyOut(page: Page, offsetBytes: number, target: Buffer): void {
    const pageStart = page.index * this.pageBytes;
    const from = Math.max(offsetBytes, pageStart);
    const to = Math.min(offsetBytes + target.length, pageStart + page.data.length);
    page.data.copy(target, from - offsetBytes, from - pageStart, to - pageStart);
  }

  async write(offsetBytes: number, data: Buffer, flags: WriteFlags): Promise<void> {
    this.checkUsable('write');
    if (data.length === 0) return;
    const [first, last] = this.pagesOf(offsetBytes, data.length);
    const reserved = await this.makeRoom(first, last);
    try {
      await this.fillAndApply(offsetBytes, data, first, last);
    } finally {
      this.reservedBytes -= reserved;
    }
    if (flags.fua) await this.writeBack(this.dirtyIndicesIn(first, last), true);
  }

  private async fillAndApply(offsetBytes: number, data: Buffer, first: number, last: number): Promise<void> {
    for (let waits = this.pendingFills(offsetBytes, data.length, first, last); waits.length > 0;
      waits = this.pendingFills(offsetBytes, data.length, first, last)) {
      const failed = (await Promise.allSettled(waits)).find((result) => result.status === 'rejected');
      if (failed) throw toBlockError((failed as PromiseRejectedResult).reason, `write at ${offsetBytes}: reading the rest of a page`);
      this.checkUsable('write');
    }
    // From here to the end of the loop nothing awaits: the change is atomic for readers.
    this.seq += 1;
    this.stats.writes += 1;
    const now = Date.now();
    for (let index = first; index <= last; index += 1) {
      let page = this.pages.get(index);
      if (!page) {
        page = this.newPage(index);
      }
      const pageStart = index * this.pageBytes;
      const from = Math.max(offsetBytes, pageStart);
      const to = Math.min(offsetBytes + data.length, pageStart + page.data.length);
      data.copy(page.data, from - pageStart, from - offsetBytes, to - offsetBytes);
      this.markDirty(page, now);
    }
    this.evictIfNeeded();
  }

  private newPage(index: number): Page {
    const data = this.slab.take().subarray(0, this.pageLength(index));
    const page: Page = {
      index, data, dirty: false, version: 0, firstUnwrittenSeq: 0, rewriteSeq: undefined, dirtiedAtMs: 0,
      writeback: undefined, loading: undefined, readers: 0, dropped: false,
      listPrevious: undefined, listNext: undefined, list: undefined,
    };
    this.pages.set(index, page);
    return page;
  }

  private markDirty(page: Page, now: number): void {
    page.version += 1;
    if (page.writeback && page.rewriteSeq === undefined) page.rewriteSeq = this.seq;
    if (page.dirty) return;
    page.dirty = true;
    page.firstUnwrittenSeq = this.seq;
    page.dirtiedAtMs = now;
    this.cleanOrder.remove(page);
    this.dirtyOrder.pushBack(page);
  }

  private markClean(page: Page): void {
    page.dirty = false;
    this.dirtyOrder.remove(page);
    this.cleanOrder.pushBack(page);
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
      const covered = offsetBytes <= pageStart && end >= pageStart + this.pageLength(index);
      if (!covered) waits.push(this.startLoad(index));
    }
    return waits;
  }

  private startLoad(index: number): Promise<void> {
    const page = this.newPage(index);
    const start = index * this.pageBytes;
    page.loading = (async () => {
      try {
        await this.gate.clear(start, start + page.data.length);
        await this.below.read(start, page.data);
        this.cleanOrder.pushBack(page);
      } catch (error) {
        this.dropPage(page);
        throw error;
      } finally {
        page.loading = undefined;
      }
    })();
    return page.loading;
  }

  /**
   * Throttles writers at the dirty limit: they wait while writeback makes
   * progress. If writeback keeps failing with a retryable error (a full pool),
   * new dirtying writes get ENOSPC, at once or after the queue timeout, and
   * are never acknowledged: memory stays bounded and nothing is dropped.
   * Overwriting pages that are already dirty needs no room.
   */
  private async makeRoom(first: number, last: number): Promise<number> {
    const limit = this.options.dirtyLimitBytes;
    let waitedSinceMs: number | undefined;
    let throttled = false;
    for (;;) {
      let newDirty = 0;
      for (let index = first; index <= last; index += 1) {
        const page = this.pages.get(index);
        if (page === undefined || !this.dirtyOrder.has(page)) newDirty += this.pageBytes;
      }
      const committed = this.dirtyBytes + this.reservedBytes;
      // A write larger than the whole limit goes in once nothing else is dirty.
      if (newDirty === 0 || committed + newDirty <= limit || committed === 0) {
        // Reserved until applied, so concurrent writers cannot all pass on the same reading.
        this.reservedBytes += newDirty;
        return newDirty;
      }
      if (this.noSpace) {
        // Out of space, the timer retries once per interval; hammering the device from here would not help.
        const timeoutMs = this.options.noSpacePolicy === 'queue' ? this.options.noSpaceTimeoutMs : 0;
        waitedSinceMs ??= Date.now();
        const remainingMs = timeoutMs - (Date.now() - waitedSinceMs);
        if (remainingMs <= 0) {
          this.stats.noSpaceRejects += 1;
          throw new BlockError('ENOSPC', `write refused: the cache is at its dirty limit (${limit} bytes) and writeback ` +
            `keeps failing (${this.noSpace.message})`, { retryable: true });
        }
        await this.nextProgress(remainingMs);
      } else {
        if (!throttled) this.stats.throttledWrites += 1;
        throttled = true;
        this.startBackground(committed + newDirty - limit);
        waitedSinceMs = undefined;
        await this.nextProgress(this.options.writebackIntervalMs || 1000);
      }
      this.checkUsable('write');
    }
  }

  /**
   * Resolves at the next writeback progress, or after `timeoutMs` at the
   * latest. Every waiting writer shares one promise and one timer (set to the
   * earliest deadline): at the dirty limit each completed writeback wakes
   * every throttled writer, and a timer per writer per wake-up made that
   * cost grow with the queue depth.
   */
  private nextProgress(timeoutMs: number): Promise<void> {
    const deadlineMs = performance.now() + timeoutMs;
    if (this.progress === undefined) {
      let wake!: () => void;
      const promise = new Promise<void>((resolve) => { wake = resolve; });
      this.progress = { promise, wake, deadlineMs, timer: setTimeout(() => this.notifyProgress(), timeoutMs) };
    } else if (deadlineMs < this.progress.deadlineMs) {
      clearTimeout(this.progress.timer);
      this.progress.deadlineMs = deadlineMs;
      this.progress.timer = setTimeout(() => this.notifyProgress(), timeoutMs);
    }
    return this.progress.promise;
  }

  private notifyProgress(): void {
    const progress = this.progress;
    if (progress === undefined) return;
    this.progress = undefined;
    clearTimeout(progress.timer);
    progress.wake();
  }

  /** Indices of the dirty pages in [first, last], ascending. */
  private dirtyIndicesIn(first: number, last: number): number[] {
    return this.pagesIn(first, last).filter((page) => page.dirty).map((page) => page.index).sort((a, b) => a - b);
  }

  /**
   * Writes back the given pages as they are now: returns once each is clean
   * or was changed after this call. Writebacks already in flight are waited
   * for (one page is never written twice at once); any failure of our own
   * rejects.
   */
  private async writeBack(indices: number[], fua: boolean): Promise<void> {
    const callSeq = this.seq;
    // With FUA, a page some other writeback carried (a flush's or the background's, without FUA) is
    // written but not durable yet: then the device below is flushed before FUA is honoured.
    const carriedByUs = new Set<number>();
    let carriedByOthers = false;
    for (;;) {
      const inFlight = new Set<Promise<void>>();
      const due: Page[] = [];
      for (const index of indices) {
        const page = this.pages.get(index);
        if (!page || !page.dirty || page.firstUnwrittenSeq > callSeq) {
          if (!carriedByUs.has(index)) carriedByOthers = true;
          continue;
        }
        if (page.writeback) inFlight.add(page.writeback);
        else due.push(page);
      }
      if (inFlight.size === 0 && due.length === 0) break;
      await Promise.all([this.writeRuns(due, fua, carriedByUs), Promise.allSettled(inFlight)]);
    }
    if (fua && carriedByOthers) await this.flushBelow();
  }

  /** Groups pages into contiguous runs and writes them, a few runs at a time; rejects with the first failure. */
  private async writeRuns(pages: Page[], fua: boolean, carried: Set<number>): Promise<void> {
    pages.sort((a, b) => a.index - b.index);
    const runs: Page[][] = [];
    const pagesPerRun = Math.max(1, Math.floor(writebackRunBytesMax / this.pageBytes));
    for (const page of pages) {
      const run = runs[runs.length - 1];
      if (run && run[run.length - 1].index === page.index - 1 && run.length < pagesPerRun) run.push(page);
      else runs.push([page]);
    }
    let failure: unknown;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < runs.length) {
        const run = runs[next];
        next += 1;
        try {
          await this.writeRun(run, fua, carried);
        } catch (error) {
          failure ??= error;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(writebackRunsInFlight, runs.length) }, worker));
    if (failure) throw failure;
  }

  /** Writes one run of pages from a snapshot; adds the indices it wrote to `carried`. */
  private async writeRun(run: Page[], fua: boolean, carried: Set<number>): Promise<void> {
    const start = run[0].index * this.pageBytes;
    const lastPage = run[run.length - 1];
    const end = lastPage.index * this.pageBytes + lastPage.data.length;
    await this.gate.clear(start, end);
    this.checkUsable('writeback');
    // Pages may have been written back, dropped by a trim, or taken by another
    // writeback while we waited: only pages still ours go out.
    const live = run.filter((page) => this.pages.get(page.index) === page && page.dirty && !page.writeback);
    if (live.length !== run.length) {
      if (live.length > 0) await this.writeRuns(live, fua, carried);
      return;
    }
    // The snapshot: the bytes as they are now, whatever writers do next.
    const pooled = this.snapshots.acquire(end - start);
    const snapshot = pooled.buffer;
    const versions = run.map((page) => {
      page.data.copy(snapshot, page.index * this.pageBytes - start);
      page.rewriteSeq = undefined;
      return page.version;
    });
    let release!: () => void;
    const settled = new Promise<void>((resolve) => { release = resolve; });
    for (const page of run) page.writeback = settled;
    try {
      await this.below.write(start, snapshot, { fua });
      this.noSpace = undefined;
      this.stats.writebacks += 1;
      this.stats.writebackBytes += snapshot.length;
      for (const page of run) carried.add(page.index);
      run.forEach((page, position) => {
        if (this.pages.get(page.index) !== page) return;
        if (page.version === versions[position]) {
          this.markClean(page);
        } else {
          // Changed during the writeback: still dirty, from the first change after the snapshot.
          page.firstUnwrittenSeq = page.rewriteSeq ?? this.seq;
          page.dirtiedAtMs = Date.now();
          this.dirtyOrder.moveToBack(page);
        }
      });
    } catch (error) {
      this.stats.writebackFailures += 1;
      throw this.writebackFailed(toBlockError(error, `writeback at ${start}`));
    } finally {
      for (const page of run) {
        page.writeback = undefined;
        page.rewriteSeq = undefined;
      }
      release();
      pooled.release();
      this.notifyProgress();
      this.evictIfNeeded();
    }
  }

  /** Classifies a writeback failure: retryable keeps everything dirty; anything else fails the device. */
  private writebackFailed(error: BlockError): BlockError {
    const action = errorAction('cache-writeback', error);
    if (action === 'fail-request') return error;
    if (action === 'keep-dirty' && !error.retryable) {
      // A request error from below (EINVAL, ENOTSUP): the device is fine, the pages stay dirty, the flush says why.
      if (this.lastRefusal !== error.message) {
        this.lastRefusal = error.message;
        this.options.logger.error({ err: error.message, dirtyBytes: this.dirtyBytes }, 'writeback refused by the device below: dirty pages kept');
      }
      return error;
    }
    if (action === 'keep-dirty') {
      if (!this.noSpace) {
        this.options.logger.warn({ err: error.message, dirtyBytes: this.dirtyBytes },
          'writeback failed with a retryable error: dirty pages kept, retried by the next flush and in the background');
        this.options.events?.({ event: 'enospc', layer: 'cache', message: error.message });
      }
      this.noSpace = error;
      return error;
    }
    this.enterFailed(error);
    return new BlockError('EIO', `writeback failed: ${error.message}`, { retryable: false });
  }

  enterFailed(error: BlockError): void {
    if (this.failure) return;
    this.failure = error;
    this.options.logger.fatal({ err: error.message, dirtyBytes: this.dirtyBytes },
      'cache writeback failed fatally: the device answers EIO until an operator acts (restart after fixing the legs)');
    this.options.events?.({ event: 'cache-failed', message: error.message });
    this.notifyProgress();
  }

  /** Writes back every page dirty now; rejects if any fails. Used by flush and by the sweeper's sync. */
  async writeBackAll(): Promise<void> {
    this.checkUsable('writeback');
    await this.writeBack(Array.from(this.dirtyOrder, (page) => page.index), false);
  }

  /**
   * Everything acknowledged before this call is written back, then the device
   * below flushes. A failure leaves every unwritten page dirty and readable.
   */
  async flush(): Promise<void> {
    this.checkUsable('flush');
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
    return this.passThrough('trim', offsetBytes, lengthBytes, () => this.below.trim(offsetBytes, lengthBytes, flags));
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    return this.passThrough('write-zeroes', offsetBytes, lengthBytes,
      () => this.below.writeZeroes(offsetBytes, lengthBytes, flags));
  }

  /**
   * Trim and write-zeroes go to the device below: cached pages wholly inside
   * the range are dropped (the operation supersedes them), partly covered ones
   * get zeroes in the covered bytes, and loads and writebacks of the range
   * wait until it has landed.
   */
  private async passThrough(what: string, offsetBytes: number, lengthBytes: number, apply: () => Promise<void>): Promise<void> {
    this.checkUsable(what);
    if (lengthBytes === 0) return;
    const end = offsetBytes + lengthBytes;
    const release = this.gate.enter(offsetBytes, end);
    try {
      const [first, last] = this.pagesOf(offsetBytes, lengthBytes);
      // Loads and writebacks that start from now on wait at the gate; only the
      // ones already past it are waited for here (waiting for the others would deadlock).
      const busy = this.pagesIn(first, last).flatMap((page) => [page.loading, page.writeback])
        .filter((promise): promise is Promise<void> => promise !== undefined);
      if (busy.length > 0) await Promise.allSettled(new Set(busy));
      this.seq += 1;
      const now = Date.now();
      for (const page of this.pagesIn(first, last)) {
        if (page.loading) continue; // blocked at the gate: it reads the result of this operation
        const pageStart = page.index * this.pageBytes;
        const whole = offsetBytes <= pageStart && end >= pageStart + page.data.length;
        if (whole || !page.dirty) {
          // The device below is authoritative for this page once the operation lands.
          this.dropPage(page);
        } else {
          page.data.fill(0, Math.max(offsetBytes, pageStart) - pageStart, Math.min(end, pageStart + page.data.length) - pageStart);
          this.markDirty(page, now);
        }
      }
      try {
        await apply();
      } catch (error) {
        const failure = toBlockError(error, what);
        if (errorAction('cache-pass-through', failure) === 'fail-cache') this.enterFailed(failure);
        throw failure;
      }
    } finally {
      release();
      this.notifyProgress();
    }
  }

  private pagesIn(first: number, last: number): Page[] {
    const found: Page[] = [];
    if (last - first + 1 <= this.pages.size) {
      for (let index = first; index <= last; index += 1) {
        const page = this.pages.get(index);
        if (page) found.push(page);
      }
    } else {
      for (const page of this.pages.values()) if (page.index >= first && page.index <= last) found.push(page);
    }
    return found;
  }

  private dropPage(page: Page): void {
    if (this.pages.get(page.index) === page) this.pages.delete(page.index);
    this.cleanOrder.remove(page);
    this.dirtyOrder.remove(page);
    page.dropped = true;
    if (page.readers === 0) this.recycle(page);
  }

  private recycle(page: Page): void {
    this.slab.give(Buffer.from(page.data.buffer, page.data.byteOffset, this.pageBytes));
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    this.checkUsable('block-status');
    const extents = await this.below.blockStatus(offsetBytes, lengthBytes);
    const [first, last] = this.pagesOf(offsetBytes, lengthBytes);
    const dirty = this.dirtyIndicesIn(first, last);
    const ranges: Array<[number, number]> = [];
    for (const index of dirty) {
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
    let dropped = 0;
    for (let page = this.cleanOrder.first; page !== undefined; page = this.cleanOrder.first) {
      this.dropPage(page);
      dropped += 1;
    }
    this.stats.evictions += dropped;
    return dropped;
  }

  private evictIfNeeded(): void {
    const capacityPages = Math.floor(this.options.capacityBytes / this.pageBytes);
    while (this.pages.size > capacityPages) {
      const oldest = this.cleanOrder.first;
      if (oldest === undefined) return;
      this.dropPage(oldest);
      this.stats.evictions += 1;
    }
  }

  private backgroundWriteback(): void {
    if (this.closed || this.failure || this.dirtyOrder.size === 0) return;
    const expiredBefore = Date.now() - this.options.dirtyExpireMs;
    const overBytes = this.dirtyBytes - this.options.dirtyLimitBytes * backgroundRatio;
    let oldest = 0;
    for (const page of this.dirtyOrder) {
      if (page.dirtiedAtMs > expiredBefore && oldest * this.pageBytes >= overBytes) break;
      oldest += 1;
    }
    // A pool that was full is retried every interval; success clears noSpace and wakes waiting writers.
    if (oldest === 0 && this.noSpace) oldest = 1;
    if (oldest > 0) this.startBackground(oldest * this.pageBytes);
  }

  /** Starts writing back the oldest dirty pages, about `bytes` of them, unless a background run is going. */
  private startBackground(bytes: number): void {
    if (this.background || this.closed || this.failure) return;
    const indices: number[] = [];
    for (const page of this.dirtyOrder) {
      if (indices.length * this.pageBytes >= Math.max(bytes, writebackRunBytesMax)) break;
      if (!page.writeback) indices.push(page.index);
    }
    if (indices.length === 0) return;
    this.background = this.writeBack(indices, false)
      .catch(() => undefined)
      .finally(() => {
        this.background = undefined;
        this.notifyProgress();
      });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    this.notifyProgress();
    await this.background;
    await this.below.close();
  }
}
