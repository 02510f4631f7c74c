import type { Logger } from 'pino';
import { BufferPool } from '../blockdev/buffer-pool.js';
import { errorAction } from '../blockdev/error-policy.js';
import { BlockError, toBlockError } from '../blockdev/errors.js';
import type { EventSink } from '../blockdev/events.js';
import type { BlockDevice } from '../blockdev/types.js';
import type { Clock } from '../sys/clock.js';
import type { Page, PageTable } from './page-table.js';
import type { RangeGate } from './range-gate.js';

/** Runs are capped so 32 in flight hold at most 8 MiB of snapshots. */
const writebackRunBytesMax = 256 * 1024;
/** Random writes make one-page runs; this many keep the legs as busy as a client at QD32 would. */
const writebackRunsInFlight = 32;
/** Background writeback starts once dirty memory passes this share of the limit. */
const backgroundRatio = 0.5;

export interface WritebackOptions {
  dirtyLimitBytes: number;
  dirtyExpireMs: number;
  logger: Logger;
  events?: EventSink;
}

/** What writeback needs from the cache it serves. */
export interface WritebackHost {
  /** Throws if the cache failed or closed. */
  checkUsable(what: string): void;
  /** A fatal failure: the cache answers EIO from now on. */
  enterFailed(error: BlockError): void;
  /** Flushes the device below (a FUA writeback whose pages another writeback carried needs it). */
  flushBelow(): Promise<void>;
  /** A run finished, well or not: throttled writers look again, memory may be evicted. */
  runFinished(): void;
  readonly failed: BlockError | undefined;
  readonly closed: boolean;
  readonly stats: { writebacks: number; writebackBytes: number; writebackFailures: number };
}

/**
 * Writes dirty pages to the device below: from a snapshot taken when a run
 * starts, so a page changed meanwhile stays dirty and the device never gets
 * a mix (lesson 1); in contiguous runs, a few at once; never dropping a page
 * on failure (a retryable one keeps it dirty and is retried; a fatal one
 * fails the cache, lesson 3).
 */
export class Writeback {
  /** Set while writeback keeps failing with a retryable error; cleared by the next success. */
  noSpace: BlockError | undefined;
  /** The last request error writeback met (logged once, not at every retry). */
  private lastRefusal: string | undefined;
  private background: Promise<void> | undefined;
  /** Writeback snapshots, reused: they are short-lived and would otherwise churn the heap. */
  private readonly snapshots = new BufferPool(8 << 20, 4096);

  constructor(private readonly pages: PageTable, private readonly below: BlockDevice, private readonly gate: RangeGate,
    private readonly host: WritebackHost, private readonly options: WritebackOptions, private readonly clock: Clock) {}

  /** The background run in progress, if any (close waits for it). */
  get backgroundRun(): Promise<void> | undefined {
    return this.background;
  }

  /**
   * Writes back the given pages as they are now: returns once each is clean
   * or was changed after this call. Writebacks already in flight are waited
   * for (one page is never written twice at once); any failure of our own
   * rejects.
   */
  async writeBack(indices: number[], fua: boolean): Promise<void> {
    const callSeq = this.pages.seq;
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
    if (fua && carriedByOthers) await this.host.flushBelow();
  }

  /**
   * The background pass, once per interval: pages dirty for longer than
   * dirtyExpireMs, and the oldest beyond half the dirty limit, are written
   * back; a pool that was full is retried (success clears noSpace and wakes
   * waiting writers).
   */
  expire(): void {
    if (this.host.closed || this.host.failed || this.pages.dirtyOrder.size === 0) return;
    const expiredBefore = this.clock.now() - this.options.dirtyExpireMs;
    const overBytes = this.pages.dirtyBytes - this.options.dirtyLimitBytes * backgroundRatio;
    let oldest = 0;
    for (const page of this.pages.dirtyOrder) {
      if (page.dirtiedAtMs > expiredBefore && oldest * this.pages.pageBytes >= overBytes) break;
      oldest += 1;
    }
    if (oldest === 0 && this.noSpace) oldest = 1;
    if (oldest > 0) this.startBackground(oldest * this.pages.pageBytes);
  }

  /** Starts writing back the oldest dirty pages, about `bytes` of them, unless a background run is going. */
  startBackground(bytes: number): void {
    if (this.background || this.host.closed || this.host.failed) return;
    const indices: number[] = [];
    for (const page of this.pages.dirtyOrder) {
      if (indices.length * this.pages.pageBytes >= Math.max(bytes, writebackRunBytesMax)) break;
      if (!page.writeback) indices.push(page.index);
    }
    if (indices.length === 0) return;
    this.background = this.writeBack(indices, false)
      .catch(() => undefined)
      .finally(() => {
        this.background = undefined;
        this.host.runFinished();
      });
  }

  /** Groups pages into contiguous runs and writes them, a few runs at a time; rejects with the first failure. */
  private async writeRuns(pages: Page[], fua: boolean, carried: Set<number>): Promise<void> {
    pages.sort((a, b) => a.index - b.index);
    const runs: Page[][] = [];
    const pagesPerRun = Math.max(1, Math.floor(writebackRunBytesMax / this.pages.pageBytes));
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
    const { pageBytes } = this.pages;
    const start = run[0].index * pageBytes;
    const lastPage = run[run.length - 1];
    const end = lastPage.index * pageBytes + lastPage.data.length;
    for (let wait = this.gate.blocking(start, end); wait !== undefined; wait = this.gate.blocking(start, end)) await wait;
    // From here to the snapshot nothing awaits: a range entered at the gate afterwards sees this writeback as busy.
    this.host.checkUsable('writeback');
    // Pages may have been written back, dropped by a trim, or taken by another
    // writeback while we waited: only pages still ours go out.
    const live = run.filter((page) => this.pages.holds(page) && page.dirty && !page.writeback);
    if (live.length !== run.length) {
      if (live.length > 0) await this.writeRuns(live, fua, carried);
      return;
    }
    // The snapshot: the bytes as they are now, whatever writers do next.
    const pooled = this.snapshots.acquire(end - start);
    const snapshot = pooled.buffer;
    let release!: () => void;
    const settled = new Promise<void>((resolve) => { release = resolve; });
    for (const page of run) {
      page.data.copy(snapshot, page.index * pageBytes - start);
      this.pages.startWriteback(page, settled);
    }
    try {
      await this.below.write(start, snapshot, { fua });
      this.noSpace = undefined;
      this.host.stats.writebacks += 1;
      this.host.stats.writebackBytes += snapshot.length;
      const now = this.clock.now();
      for (const page of run) {
        carried.add(page.index);
        this.pages.writebackLanded(page, now);
      }
    } catch (error) {
      this.host.stats.writebackFailures += 1;
      throw this.failed(toBlockError(error, `writeback at ${start}`));
    } finally {
      for (const page of run) this.pages.writebackEnded(page);
      release();
      pooled.release();
      this.host.runFinished();
    }
  }

  /**
   * The device below failed a write with a retryable error (ENOSPC): the
   * cache is out of space until a writeback succeeds (reported once, then
   * retried by flushes and in the background).
   */
  retryableFailureBelow(error: BlockError): void {
    if (!this.noSpace) {
      this.options.logger.warn({ err: error.message, dirtyBytes: this.pages.dirtyBytes },
        'a write below the cache failed with a retryable error: dirty pages kept, retried by the next flush and in the background');
      this.options.events?.({ event: 'enospc', layer: 'cache', message: error.message });
    }
    this.noSpace = error;
  }

  /** Classifies a writeback failure: retryable keeps everything dirty; anything else fails the device. */
  private failed(error: BlockError): BlockError {
    const action = errorAction('cache-writeback', error);
    if (action === 'fail-request') return error;
    if (action === 'keep-dirty' && !error.retryable) {
      // A request error from below (EINVAL, ENOTSUP): the device is fine, the pages stay dirty, the flush says why.
      if (this.lastRefusal !== error.message) {
        this.lastRefusal = error.message;
        this.options.logger.error({ err: error.message, dirtyBytes: this.pages.dirtyBytes },
          'writeback refused by the device below: dirty pages kept');
      }
      return error;
    }
    if (action === 'keep-dirty') {
      this.retryableFailureBelow(error);
      return error;
    }
    this.host.enterFailed(error);
    return new BlockError('EIO', `writeback failed: ${error.message}`, { retryable: false });
  }
}
