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

export interface WriteAroundPolicyOptions {
  /** Writes of at least this size always go around; 0: no write goes around. */
  writeAroundBytes: number;
  dirtyLimitBytes: number;
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

  constructor(private readonly pages: PageTable, private readonly options: WriteAroundPolicyOptions) {}

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
    const continuesStream = this.streamEnds[first % streamSlots] === first;
    this.streamEnds[(last + 1) % streamSlots] = last + 1;
    if (continuesStream || this.pages.dirtyBytes < this.options.dirtyLimitBytes * busyDirtyShare) return false;
    for (let index = first; index <= last; index += 1) {
      if (this.pages.isDirty(index) || this.recentlyAround[index % recentlyAroundSlots] === index) return false;
    }
    for (let index = first; index <= last; index += 1) this.recentlyAround[index % recentlyAroundSlots] = index;
    return true;
  }
}
