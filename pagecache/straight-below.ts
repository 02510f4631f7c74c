import assert from 'node:assert/strict';
import { errorAction } from '../blockdev/error-policy.js';
import { type BlockError, toBlockError } from '../blockdev/errors.js';
import { type BlockDevice, finishedNow, type WriteFlags } from '../blockdev/types.js';
import type { Clock } from '../sys/clock.js';
import { pageState, type PageTable } from './page-table.js';
import type { RangeGate } from './range-gate.js';

/** What operations that go straight to the device below need from the cache. */
export interface StraightBelowHost {
  /** Throws if the cache failed or closed. */
  checkUsable(what: string): void;
  /** A fatal failure below: the cache answers EIO from now on. */
  enterFailed(error: BlockError): void;
  /** Pages were dropped or a range was released: throttled writers look again. */
  progressMade(): void;
  readonly stats: { writesAround: number; bytesWrittenAround: number };
}

/**
 * Trim, write-zeroes and large writes: operations the device below carries
 * out itself, with the cache kept in order around them. Each holds its byte
 * range in the gate, so loads, writebacks and cached writes of the range wait
 * for it, and waits first for the loads and writebacks already under way; so
 * while it is in flight nothing in the range changes in the cache, and
 * whatever the cache holds afterwards is ordered after it.
 */
export class StraightBelow {
  constructor(private readonly pages: PageTable, private readonly below: BlockDevice, private readonly gate: RangeGate,
    private readonly host: StraightBelowHost, private readonly clock: Clock) {}

  /**
   * A large write, sent to the device below instead of copied into pages
   * (bcache's sequential cutoff, a write-around cache): the payload is one
   * stable buffer (lesson 1) and goes down once, without a copy. Cached
   * pages of the range are older than it: they are dropped once it has
   * landed, and kept (dirty and readable, lesson 3) if it fails. The range
   * must be whole pages. Acknowledged only once the device below has it, so
   * the next flush covers it as it covers writebacks. Not itself async:
   * most writes of a busy cache come here, and each async layer costs a
   * promise and a microtask turn; finishedNow when the device below
   * finished it in the turn (see exclusive).
   */
  writeAround(offsetBytes: number, data: Buffer, flags: WriteFlags): Promise<void> {
    const { pageBytes } = this.pages;
    const end = offsetBytes + data.length;
    const [first, last] = this.pages.pagesOf(offsetBytes, data.length);
    if (offsetBytes % pageBytes !== 0 || end !== last * pageBytes + this.pages.pageLength(last)) {
      assert.fail(`write around [${offsetBytes}, ${end}) is not whole pages`);
    }
    return this.exclusive('write', offsetBytes, end, () => this.below.write(offsetBytes, data, flags), () => {
      for (const page of this.pages.pagesIn(first, last)) {
        // A fill that was still waiting at the gate when the range was entered (behind an older trim of its
        // page) reads below after this write: it will hold these bytes, so it stays.
        if (page.loading && !page.loadingPastGate) continue;
        const state = pageState(page);
        // Nothing else may load, write back or change a page while the range is held and the busy ones were waited for.
        if (state !== 'clean' && state !== 'dirty') assert.fail(`page ${page.index} is ${state} under a write around`);
        this.pages.drop(page);
      }
      this.host.stats.writesAround += 1;
      this.host.stats.bytesWrittenAround += data.length;
    });
  }

  /**
   * Trim and write-zeroes: cached pages wholly inside the range are dropped
   * (the operation supersedes them), partly covered dirty ones get zeroes in
   * the covered bytes (they stay dirty: their other bytes are still owed to
   * the device), partly covered clean ones are dropped.
   */
  async supersede(what: string, offsetBytes: number, lengthBytes: number, apply: () => Promise<void>): Promise<void> {
    const end = offsetBytes + lengthBytes;
    await this.exclusive(what, offsetBytes, end, async () => {
      const [first, last] = this.pages.pagesOf(offsetBytes, lengthBytes);
      this.pages.seq += 1;
      const now = this.clock.now();
      for (const page of this.pages.pagesIn(first, last)) {
        // A fill of a page the range covers only in part waits at the gate (its own range is the whole
        // page): it reads the result of this operation. Dropping it would strand its writer.
        if (page.loading) continue;
        const pageStart = page.index * this.pages.pageBytes;
        const whole = offsetBytes <= pageStart && end >= pageStart + page.data.length;
        if (whole || !page.dirty) {
          // The device below is authoritative for this page once the operation lands.
          this.pages.drop(page);
        } else {
          page.data.fill(0, Math.max(offsetBytes, pageStart) - pageStart, Math.min(end, pageStart + page.data.length) - pageStart);
          this.pages.markDirty(page, now);
        }
      }
      await apply();
    }, () => undefined);
  }

  /**
   * Holds [start, end) in the gate, waits for the loads and writebacks of it
   * already under way, runs `apply` below, then `landed` in the same turn as
   * its success. A failure below is classified: a fatal one fails the cache.
   *
   * With nothing to wait for (the usual case) it enters at once, and when
   * the device below finishes in the turn (the mirror's inline file writes)
   * it answers finishedNow, so the write above it does too and its reply
   * goes out in the turn that read the request, batched with the others
   * (see finishedNow). An earlier build always answered with a promise:
   * 4k random writes at QD32 through the cache then cost 7.2-7.9 us of user
   * CPU per request against 3.4-4.3 without the cache; the measurements
   * that once favoured the promise were taken when the mirror's own path
   * cost several times what it does now.
   */
  private exclusive(what: string, start: number, end: number, apply: () => Promise<void>, landed: () => void): Promise<void> {
    const enteredAtOnce = this.gate.tryEnter(start, end);
    if (enteredAtOnce !== undefined && this.busyIn(start, end) === undefined) return this.applyHeld(what, enteredAtOnce, apply, landed);
    return this.exclusiveAfterWaits(what, start, end, apply, landed, enteredAtOnce);
  }

  /** exclusive() when the range is held by another operation (`enteredAtOnce` undefined) or has loads or writebacks under way. */
  private async exclusiveAfterWaits(what: string, start: number, end: number, apply: () => Promise<void>, landed: () => void,
    enteredAtOnce: (() => void) | undefined): Promise<void> {
    const release = enteredAtOnce ?? await this.gate.enter(start, end);
    try {
      const busy = this.busyIn(start, end);
      if (busy !== undefined) await Promise.allSettled(busy);
      // The cache checked it was usable before calling, but a wait came between.
      this.host.checkUsable(what);
    } catch (error) {
      this.leave(release);
      throw error;
    }
    return this.applyHeld(what, release, apply, landed);
  }

  /** Runs `apply` with its range held (`release`), and `landed` on success; finishedNow when `apply` finished in the turn. */
  private applyHeld(what: string, release: () => void, apply: () => Promise<void>, landed: () => void): Promise<void> {
    let applying: Promise<void>;
    try {
      applying = apply();
    } catch (error) {
      applying = Promise.reject(error);
    }
    if (applying === finishedNow) {
      try {
        landed();
      } finally {
        this.leave(release);
      }
      return finishedNow;
    }
    return applying.then(landed, (error: unknown) => {
      const failure = toBlockError(error, what);
      if (errorAction('cache-pass-through', failure) === 'fail-cache') this.host.enterFailed(failure);
      throw failure;
    }).finally(() => this.leave(release));
  }

  private leave(release: () => void): void {
    release();
    this.host.progressMade();
  }

  /**
   * The loads and writebacks of cached pages in [start, end) already past the
   * gate, if any. Those that start from now on wait at the gate; waiting for
   * them here would deadlock.
   */
  private busyIn(start: number, end: number): Set<Promise<void>> | undefined {
    const [first, last] = this.pages.pagesOf(start, end - start);
    let busy: Set<Promise<void>> | undefined;
    for (const page of this.pages.pagesIn(first, last)) {
      if (page.loadingPastGate && page.loading) (busy ??= new Set()).add(page.loading);
      if (page.writeback) (busy ??= new Set()).add(page.writeback);
    }
    return busy;
  }
}
