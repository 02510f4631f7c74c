import assert from 'node:assert/strict';

interface Entry {
  startBytes: number;
  endBytes: number;
  mutating: boolean;
  waiters: Array<() => void> | undefined;
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
  private readonly active = new Set<Entry>();

  get size(): number {
    return this.active.size;
  }

  acquire(startBytes: number, lengthBytes: number, mutating: boolean): Ticket {
    assert(lengthBytes >= 0);
    const entry: Entry = { startBytes, endBytes: startBytes + lengthBytes, mutating, waiters: undefined };
    let conflicts: Entry[] | undefined;
    if (lengthBytes > 0) {
      for (const other of this.active) {
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
    this.active.add(entry);
    let released = false;
    return {
      ready,
      release: () => {
        assert(!released, 'ticket released twice');
        released = true;
        this.active.delete(entry);
        for (const waiter of entry.waiters ?? []) waiter();
      },
    };
  }
}
