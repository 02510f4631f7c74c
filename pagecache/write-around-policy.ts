import type { Clock } from '../sys/clock.js';
import type { PageTable } from './page-table.js';

/**
 * Small writes go around a busy cache once this share of the dirty limit is
 * dirty. Below it every small write is cached, so a light load keeps the
 * cache's latency and a hot page gets the chance to become dirty and absorb
 * its rewrites. Background writeback starts at half the limit; a quarter
 * bypasses before writeback has to run flat out. Under uniform random 4 KiB
 * writes at QD32 a quarter caches about 8% of them; a share of 0 cached 2%
 * and ran no faster (3 alternating pairs), so what the cache costs there is
 * not the writes it keeps.
 */
const busyDirtyShare = 0.25;
/**
 * Pages written around recently, remembered so that a second write to one
 * is cached: 4096 slots. With 16384 (64 MiB of pages), uniform random 4 KiB
 * writes over 1 GiB found 6% of their pages there and ran 10% slower; hot
 * pages (a bitmap, a journal's head) come back far sooner than 4096 writes.
 */
const recentlyAroundSlots = 4096;
/** Recent write ends kept to recognise streams (bcache keeps 64 for its sequential cutoff). */
const streamSlots = 128;
/**
 * A client that flushes after every write or few (a database's commit, fio
 * --fsync=1) gains nothing from the cache: each flush at once writes back
 * what the writes before it cached, through a writeback run, before the
 * flush below. Flushes that follow at most this many small writes count as
 * such (counted whether the writes were cached or not, so the bypass ends
 * when the client starts writing more between flushes); after
 * `syncFlushesToBypass` of them in a row, each within `syncFlushGapMs` of
 * the one before, small writes go around until a flush follows more
 * writes or none comes for that long. 4k write + flush at QD1 over the
 * mirror: with the cache caching each write, 0.90x the mirror without it
 * (287 us of server CPU per pair against 209).
 */
const syncFlushWritesMax = 8;
const syncFlushesToBypass = 3;
const syncFlushGapMs = 50;

export interface WriteAroundPolicyOptions {
  /** Writes of at least this size always go around; 0: no write goes around. */
  writeAroundBytes: number;
  dirtyLimitBytes: number;
  /** Time for the flush gaps (see syncFlushGapMs); read only once flushes have come close together. */
  clock: Pick<Clock, 'now'>;
}

/**
 * Which writes go straight to the device below instead of into pages.
 *
 * Large writes always do (bcache's sequential cutoff). A small whole-page
 * write goes around too while the cache is busy (a quarter of the dirty
 * limit is dirty) unless caching it saves work:
 *   - it overwrites a dirty page: absorbed, one writeback instead of two;
 *   - it starts where a recent write ended: a stream of small writes, which
 *     writeback coalesces into runs of up to 256 KiB;
 *   - it rewrites a page written around recently: a hot page, cached from
 *     its second write (admission on a second hit, as in 2Q and dm-cache's
 *     smq).
 * And while the client flushes after (nearly) every write, every small
 * whole-page write goes around: the flush would write it back at once.
 * Anything else is a write the cache would copy, track and later write back
 * on its own, for nothing: uniform random 4 KiB writes over a device four
 * times the cache ran at 0.5-0.65x the same mirror without the cache, and
 * at 0.9-1.1x with this policy (about 8% of them cached). Recognising
 * streams by the neighbours' dirty bits instead of recent write ends cost
 * a fifth of the throughput: in random writes the neighbours of cached
 * pages were cached in turn.
 */
export class WriteAroundPolicy {
  /**
   * Direct-mapped tables of page indices (a page's slot is its index modulo
   * the size; a newer page in a slot replaces the older one): a few array
   * lookups per write. A Set trimmed from its oldest entry cost a quarter of
   * the throughput, as deleting from the front of an insertion-ordered hash
   * set leaves tombstones that each look at the front walks over.
   */
  private readonly recentlyAround = new Float64Array(recentlyAroundSlots).fill(-1);
  /** The page after the last page of recent writes, cached or not. */
  private readonly streamEnds = new Float64Array(streamSlots).fill(-1);

  /** Consecutive flushes that followed at most syncFlushWritesMax small writes, and when the last one came. */
  private syncFlushes = 0;
  private lastSyncFlushMs = -Infinity;
  /** Small whole-page writes since the last flush. */
  private writesSinceFlush = 0;

  constructor(private readonly pages: PageTable, private readonly options: WriteAroundPolicyOptions) {}

  /** A client flush is starting (see syncFlushWritesMax). */
  flushStarting(): void {
    const followsFewWrites = this.writesSinceFlush <= syncFlushWritesMax;
    this.writesSinceFlush = 0;
    if (!followsFewWrites) {
      this.syncFlushes = 0;
      return;
    }
    const nowMs = this.options.clock.now();
    this.syncFlushes = nowMs - this.lastSyncFlushMs <= syncFlushGapMs ? this.syncFlushes + 1 : 1;
    this.lastSyncFlushMs = nowMs;
  }

  /** Whether the client flushes after (nearly) every write, as far as the last flushes tell. */
  flushesFollowWrites(): boolean {
    return this.syncFlushes >= syncFlushesToBypass && this.options.clock.now() - this.lastSyncFlushMs <= syncFlushGapMs;
  }

  /** Whether a write of `lengthBytes` goes around whatever the cache holds. */
  isLarge(lengthBytes: number): boolean {
    return this.options.writeAroundBytes > 0 && lengthBytes >= this.options.writeAroundBytes;
  }

  /**
   * Whether a small write of whole pages [first, last] goes around. Not while
   * writeback is out of space: caching it keeps the no-space policy's answer
   * (queue or error at the dirty limit) instead of ENOSPC from below at once.
   */
  smallWriteGoesAround(first: number, last: number, outOfSpace: boolean): boolean {
    if (this.options.writeAroundBytes === 0 || outOfSpace) return false;
    this.writesSinceFlush += 1;
    const continuesStream = this.streamEnds[first % streamSlots] === first;
    this.streamEnds[(last + 1) % streamSlots] = last + 1;
    if (this.flushesFollowWrites()) return true;
    if (continuesStream || this.pages.dirtyBytes < this.options.dirtyLimitBytes * busyDirtyShare) return false;
    for (let index = first; index <= last; index += 1) {
      if (this.pages.isDirty(index) || this.recentlyAround[index % recentlyAroundSlots] === index) return false;
    }
    for (let index = first; index <= last; index += 1) this.recentlyAround[index % recentlyAroundSlots] = index;
    return true;
  }
}
