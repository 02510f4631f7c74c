import assert from 'node:assert/strict';

interface Entry {
  startBytes: number;
  endBytes: number;
  mutating: boolean;
  waiters: Array<() => void> | undefined;
  /** Neighbours in the in-flight list; the entry is its own ticket's state. */
  previous: Entry | undefined;
  next: Entry | undefined;
  released: boolean;
}

export interface Ticket {
  /** Resolves when every earlier conflicting operation has released; undefined when none conflict. */
  ready: Promise<void> | undefined;
  release(): void;
}

/**
 * Orders overlapping operations by arrival: an operation waits for every
 * earlier in-flight one whose range overlaps it when either of them writes.
 * Non-overlapping operations (the common case) never wait. The in-flight set
 * is bounded by the caller's queue depth, so the linear scan stays short.
 */
export class RangeOrder {
  /**
   * In-flight operations, oldest first, as a list threaded through the
   * entries. A Set here rebuilt its hash table every few dozen adds and
   * deletes; each table outlived young-generation collection and was
   * promoted, so at 100k requests a second the old generation filled in
   * under a second and major collections took a fifth of the server's CPU.
   */
  private first: Entry | undefined;
  private last: Entry | undefined;
  private count = 0;

  get size(): number {
    return this.count;
  }

  acquire(startBytes: number, lengthBytes: number, mutating: boolean): Ticket {
    assert(lengthBytes >= 0);
    const entry: Entry = {
      startBytes, endBytes: startBytes + lengthBytes, mutating, waiters: undefined,
      previous: this.last, next: undefined, released: false,
    };
    let conflicts: Entry[] | undefined;
    if (lengthBytes > 0) {
      for (let other = this.first; other !== undefined; other = other.next) {
        if (!(mutating || other.mutating)) continue;
        if (other.startBytes >= entry.endBytes || startBytes >= other.endBytes) continue;
        (conflicts ??= []).push(other);
      }
    }
    let ready: Promise<void> | undefined;
    if (conflicts !== undefined) {
      let blockers = conflicts.length;
      ready = new Promise<void>((wake) => {
        const onBlockerDone = (): void => {
          blockers -= 1;
          if (blockers === 0) wake();
        };
        for (const other of conflicts!) (other.waiters ??= []).push(onBlockerDone);
      });
    }
    if (this.last === undefined) this.first = entry;
    else this.last.next = entry;
    this.last = entry;
    this.count += 1;
    return { ready, release: () => this.release(entry) };
  }

  private release(entry: Entry): void {
    assert(!entry.released, 'ticket released twice');
    entry.released = true;
    if (entry.previous === undefined) this.first = entry.next;
    else entry.previous.next = entry.next;
    if (entry.next === undefined) this.last = entry.previous;
    else entry.next.previous = entry.previous;
    entry.previous = undefined;
    entry.next = undefined;
    this.count -= 1;
    for (const waiter of entry.waiters ?? []) waiter();
  }
}
