import assert from 'node:assert/strict';
import { IntrusiveList, type ListNode } from '../blockdev/intrusive-list.js';
import { PageSlab } from './page-slab.js';

/**
 * What a cached page is, as one value. The fields below carry the detail
 * (which writeback, which load); pageState() reads them back into this type,
 * and each transition below asserts the state it starts from.
 *
 *   loading ──fill done──> clean ──write──> dirty ──writeback starts──> writeback
 *      │                    ^                 ^                          │   │
 *      └──fill failed──> dropped              │ changed during it        │   │
 *                           ^    (trim, evict)└── dirty_in_writeback <───┘   │
 *                           └─────────────────────────── clean <─ unchanged ─┘
 */
export type PageState = 'loading' | 'clean' | 'dirty' | 'writeback' | 'dirty_in_writeback' | 'dropped';

export interface Page extends ListNode<Page> {
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
  /** The version a writeback in flight took its snapshot of. */
  versionAtWriteback: number | undefined;
  /** Read-modify-write fill from below in progress; writers wait for it. */
  loading: Promise<void> | undefined;
  /** The fill is past the range gate and reading from below (operations that take the range wait for it). */
  loadingPastGate: boolean;
  /** Reads copying out of this page: its memory is recycled only after they finish. */
  readers: number;
  dropped: boolean;
}

export function pageState(page: Page): PageState {
  if (page.dropped) return 'dropped';
  if (page.loading) return 'loading';
  if (page.writeback) return page.version !== page.versionAtWriteback ? 'dirty_in_writeback' : 'writeback';
  return page.dirty ? 'dirty' : 'clean';
}

/**
 * The cached pages: the index, the clean list (eviction order) and the dirty
 * list (age order), and their memory. The one place a page changes state.
 */
export class PageTable {
  private readonly pages = new Map<number, Page>();
  /** Clean pages, in the order they were read in or cleaned: eviction drops from the front. */
  private readonly cleanOrder = new IntrusiveList<Page>();
  /** Dirty pages, oldest first. */
  readonly dirtyOrder = new IntrusiveList<Page>();
  private readonly slab: PageSlab;
  /** Bumped by every change to cached bytes (writes, trims): orders changes against writebacks. */
  seq = 0;

  constructor(readonly pageBytes: number, private readonly sizeBytes: number) {
    this.slab = new PageSlab(pageBytes);
  }

  get size(): number {
    return this.pages.size;
  }

  get dirtyBytes(): number {
    return this.dirtyOrder.size * this.pageBytes;
  }

  get cachedBytes(): number {
    return this.pages.size * this.pageBytes;
  }

  get allocatedBytes(): number {
    return this.slab.allocatedBytes;
  }

  get(index: number): Page | undefined {
    return this.pages.get(index);
  }

  /** Whether `page` is still the cached page of its index (not dropped and replaced meanwhile). */
  holds(page: Page): boolean {
    return this.pages.get(page.index) === page;
  }

  isDirty(index: number): boolean {
    const page = this.pages.get(index);
    return page !== undefined && this.dirtyOrder.has(page);
  }

  pageLength(index: number): number {
    return Math.min(this.pageBytes, this.sizeBytes - index * this.pageBytes);
  }

  pagesOf(offsetBytes: number, lengthBytes: number): [number, number] {
    return [Math.floor(offsetBytes / this.pageBytes), Math.floor((offsetBytes + lengthBytes - 1) / this.pageBytes)];
  }

  /** A new page for `index`, in no list yet: the caller fills it, then marks it clean (loaded) or dirty (written). */
  newPage(index: number): Page {
    if (this.pages.has(index)) assert.fail(`page ${index} is already cached`);
    const data = this.slab.take().subarray(0, this.pageLength(index));
    const page: Page = {
      index, data, dirty: false, version: 0, firstUnwrittenSeq: 0, rewriteSeq: undefined, dirtiedAtMs: 0,
      writeback: undefined, versionAtWriteback: undefined, loading: undefined, loadingPastGate: false, readers: 0, dropped: false,
      listPrevious: undefined, listNext: undefined, list: undefined,
    };
    this.pages.set(index, page);
    return page;
  }

  /** A fill from below finished: the page holds the device's bytes. */
  loaded(page: Page): void {
    if (page.dropped || page.dirty || page.list !== undefined) assert.fail(`page ${page.index} loaded in state ${pageState(page)}`);
    this.cleanOrder.pushBack(page);
  }

  /** Its bytes changed (a write, or zeroes from a partial trim). */
  markDirty(page: Page, now: number): void {
    if (page.dropped) assert.fail(`page ${page.index} changed after it was dropped`);
    page.version += 1;
    if (page.writeback && page.rewriteSeq === undefined) page.rewriteSeq = this.seq;
    if (page.dirty) return;
    page.dirty = true;
    page.firstUnwrittenSeq = this.seq;
    page.dirtiedAtMs = now;
    this.cleanOrder.remove(page);
    this.dirtyOrder.pushBack(page);
  }

  /** A writeback starts: its snapshot of the page's bytes is on the way until `settled`. */
  startWriteback(page: Page, settled: Promise<void>): void {
    if (pageState(page) !== 'dirty') assert.fail(`writeback of page ${page.index} in state ${pageState(page)}`);
    page.rewriteSeq = undefined;
    page.versionAtWriteback = page.version;
    page.writeback = settled;
  }

  /**
   * A writeback of `page` landed: clean if nothing changed it meanwhile,
   * else still dirty, from the first change after the snapshot.
   */
  writebackLanded(page: Page, now: number): void {
    if (page.writeback === undefined) assert.fail(`page ${page.index}: no writeback to land`);
    if (!this.holds(page)) return;
    if (page.version === page.versionAtWriteback) {
      page.dirty = false;
      this.dirtyOrder.remove(page);
      this.cleanOrder.pushBack(page);
    } else {
      page.firstUnwrittenSeq = page.rewriteSeq ?? this.seq;
      page.dirtiedAtMs = now;
      this.dirtyOrder.moveToBack(page);
    }
  }

  /** The writeback is over (landed or failed): a failed one leaves the page dirty as it was. */
  writebackEnded(page: Page): void {
    page.writeback = undefined;
    page.rewriteSeq = undefined;
    page.versionAtWriteback = undefined;
  }

  /** Whether no page in [first, last] is cached (loading or not). */
  noneCachedIn(first: number, last: number): boolean {
    if (this.pages.size === 0) return true;
    if (last - first + 1 > this.pages.size) {
      for (const index of this.pages.keys()) if (index >= first && index <= last) return false;
      return true;
    }
    for (let index = first; index <= last; index += 1) if (this.pages.has(index)) return false;
    return true;
  }

  /** The cached pages in [first, last]. */
  pagesIn(first: number, last: number): Page[] {
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

  /** Indices of the dirty pages in [first, last], ascending. */
  dirtyIndicesIn(first: number, last: number): number[] {
    return this.pagesIn(first, last).filter((page) => page.dirty).map((page) => page.index).sort((a, b) => a - b);
  }

  /** Every page dirty now, oldest first. */
  dirtyIndices(): number[] {
    return Array.from(this.dirtyOrder, (page) => page.index);
  }

  /** Forgets the page; its memory is reused once no read is copying out of it. */
  drop(page: Page): void {
    if (this.holds(page)) this.pages.delete(page.index);
    this.cleanOrder.remove(page);
    this.dirtyOrder.remove(page);
    page.dropped = true;
    if (page.readers === 0) this.recycle(page);
  }

  /** A read stops copying out of the page. */
  readDone(page: Page): void {
    if (page.readers <= 0) assert.fail(`page ${page.index}: more reads finished than started`);
    page.readers -= 1;
    if (page.readers === 0 && page.dropped) this.recycle(page);
  }

  /** Drops clean pages, oldest first, until at most `capacityPages` are cached; returns how many. */
  evictTo(capacityPages: number): number {
    let evicted = 0;
    while (this.pages.size > capacityPages) {
      const oldest = this.cleanOrder.first;
      if (oldest === undefined) break;
      this.drop(oldest);
      evicted += 1;
    }
    return evicted;
  }

  /** Drops every clean page (memory pressure); dirty pages always stay. */
  dropClean(): number {
    let dropped = 0;
    for (let page = this.cleanOrder.first; page !== undefined; page = this.cleanOrder.first) {
      this.drop(page);
      dropped += 1;
    }
    return dropped;
  }

  private recycle(page: Page): void {
    this.slab.give(Buffer.from(page.data.buffer, page.data.byteOffset, this.pageBytes));
  }
}
