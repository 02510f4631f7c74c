/**
 * Byte ranges with a pass-through operation (trim, write-zeroes) in flight.
 * Loads and writebacks that overlap one wait for it: a load that read the
 * range before the trim landed, or a writeback the trim then erased, would
 * leave the cache and the device disagreeing about which happened last.
 */
export class RangeGate {
  private readonly active = new Set<{ start: number; end: number; done: Promise<void> }>();

  /** Marks [start, end) busy until the returned release is called. */
  enter(start: number, end: number): () => void {
    let release!: () => void;
    const entry = { start, end, done: new Promise<void>((resolve) => { release = resolve; }) };
    this.active.add(entry);
    return () => {
      this.active.delete(entry);
      release();
    };
  }

  /** Resolves once no pass-through overlapping [start, end) is in flight. */
  async clear(start: number, end: number): Promise<void> {
    for (;;) {
      let blocking: Promise<void> | undefined;
      for (const entry of this.active) {
        if (entry.start < end && start < entry.end) {
          blocking = entry.done;
          break;
        }
      }
      if (!blocking) return;
      await blocking;
    }
  }

  get idle(): boolean {
    return this.active.size === 0;
  }
}
