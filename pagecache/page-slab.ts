/**
 * Page memory, carved out of 1 MiB slabs and recycled through a free list:
 * the cache's memory is bounded by its capacity up front instead of by when
 * the garbage collector gets round to thousands of small freed buffers.
 */
export class PageSlab {
  private readonly free: Buffer[] = [];
  private slabs = 0;
  private readonly pagesPerSlab: number;

  constructor(private readonly pageBytes: number, slabBytes = 1 << 20) {
    this.pagesPerSlab = Math.max(1, Math.floor(slabBytes / pageBytes));
  }

  get allocatedBytes(): number {
    return this.slabs * this.pagesPerSlab * this.pageBytes;
  }

  /** A page-sized buffer with stale contents: the caller overwrites all of it. */
  take(): Buffer {
    let page = this.free.pop();
    if (!page) {
      const slab = Buffer.allocUnsafeSlow(this.pagesPerSlab * this.pageBytes);
      this.slabs += 1;
      for (let index = this.pagesPerSlab - 1; index > 0; index -= 1) {
        this.free.push(slab.subarray(index * this.pageBytes, (index + 1) * this.pageBytes));
      }
      page = slab.subarray(0, this.pageBytes);
    }
    return page;
  }

  give(page: Buffer): void {
    this.free.push(page);
  }
}
