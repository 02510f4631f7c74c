/**
 * Time as the timing logic sees it (the sweeper's interval, the page cache's
 * writeback expiry, the handshake deadline, the crash points' delay). Passed
 * in rather than read from globals, so a test can step time itself and check
 * "after 30 s this happens" without sleeping 30 s, and without a test that
 * passes only because the machine happened to be fast.
 */
export interface Clock {
  /** Milliseconds; only differences mean anything. */
  now(): number;
  /** Runs `callback` once after `delayMs`; unref'd timers do not keep the process alive. */
  setTimeout(callback: () => void, delayMs: number, options?: { unref?: boolean }): ClockTimer;
}

export interface ClockTimer {
  cancel(): void;
}

export const systemClock: Clock = {
  now: () => performance.now(),
  setTimeout(callback, delayMs, options) {
    const timer = setTimeout(callback, delayMs);
    if (options?.unref) timer.unref();
    return { cancel: () => clearTimeout(timer) };
  },
};

/**
 * A clock that moves only when told to. Timers due by the new time run in
 * due order (ties in the order they were set), each seeing now() at its own
 * due time, as they would on a real clock that was not late.
 */
export class ManualClock implements Clock {
  private nowMs: number;
  private timers: Array<{ dueMs: number; order: number; callback: () => void }> = [];
  private order = 0;

  constructor(startMs = 0) {
    this.nowMs = startMs;
  }

  now(): number {
    return this.nowMs;
  }

  setTimeout(callback: () => void, delayMs: number): ClockTimer {
    const timer = { dueMs: this.nowMs + Math.max(0, delayMs), order: this.order++, callback };
    this.timers.push(timer);
    return { cancel: () => { this.timers = this.timers.filter((other) => other !== timer); } };
  }

  /** Timers not yet run. */
  get pending(): number {
    return this.timers.length;
  }

  /** Moves time forward by `deltaMs`, running every timer that falls due, including ones those set. */
  advance(deltaMs: number): void {
    const target = this.nowMs + deltaMs;
    for (let guard = 0; guard < 100_000; guard += 1) {
      this.timers.sort((a, b) => a.dueMs - b.dueMs || a.order - b.order);
      const next = this.timers[0];
      if (next === undefined || next.dueMs > target) break;
      this.timers.shift();
      this.nowMs = next.dueMs;
      next.callback();
    }
    this.nowMs = target;
  }
}
