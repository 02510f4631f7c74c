/**
 * Byte ranges with an operation that goes straight to the device below in
 * flight (trim, write-zeroes, a write around the cache). Loads, writebacks
 * and cached writes that overlap one wait for it, and two of them never
 * overlap: a load that read the range before the operation landed, or a
 * writeback it then superseded, would leave the cache and the device
 * disagreeing about which happened last.
 */
interface GateEntry {
  start: number;
  end: number;
  /** Made only when something waits: most operations run with nobody behind them. */
  done: Promise<void> | undefined;
  wake: (() => void) | undefined;
}

export class RangeGate {
  private readonly active = new Set<GateEntry>();

  /** Waits until nothing overlapping [start, end) is in flight, then marks it busy until the returned release is called. */
  async enter(start: number, end: number): Promise<() => void> {
    // Checked and entered in the same turn: two overlapping callers cannot both pass.
    for (let blocking = this.blocking(start, end); blocking !== undefined; blocking = this.blocking(start, end)) await blocking;
    return this.enterNow(start, end);
  }

  /**
   * Enters [start, end) at once if nothing overlapping is in flight (the
   * usual case), without the turn an `await` of enter() costs; undefined
   * otherwise, and the caller awaits enter().
   */
  tryEnter(start: number, end: number): (() => void) | undefined {
    return this.blocking(start, end) === undefined ? this.enterNow(start, end) : undefined;
  }

  private enterNow(start: number, end: number): () => void {
    const entry: GateEntry = { start, end, done: undefined, wake: undefined };
    this.active.add(entry);
    return () => {
      this.active.delete(entry);
      entry.wake?.();
    };
  }

  /**
   * What an operation on [start, end) has to wait for now, if anything. A
   * caller loops until this is undefined and starts its operation in that
   * same turn (an `await` between the check and the start would let an
   * entry slip in unseen):
   *   for (let wait = gate.blocking(s, e); wait; wait = gate.blocking(s, e)) await wait;
   */
  blocking(start: number, end: number): Promise<void> | undefined {
    if (this.active.size === 0) return undefined;
    for (const entry of this.active) {
      if (entry.start < end && start < entry.end) {
        entry.done ??= new Promise<void>((resolve) => { entry.wake = resolve; });
        return entry.done;
      }
    }
    return undefined;
  }

  get idle(): boolean {
    return this.active.size === 0;
  }
}
