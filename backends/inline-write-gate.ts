/** A write into the page cache takes microseconds; one slower than this met throttling or a busy page. */
const stallMs = 1;
/** A lone stall pauses inline writes for this many times its length; each stall soon after a pause doubles it. */
const pauseFactorFirst = 10;
const pauseFactorMax = 100;
const pauseMaxMs = 2000;
/** A stall this soon after inline writes resumed counts as the same episode. */
const episodeGapMs = 1000;

/**
 * Decides when small writes may run on the event loop (see FileLegOptions.
 * inlineWriteBytesMax). An inline write that stalls blocks every client, so
 * after one, writes go to the thread pool for a while. How long is a
 * trade: through the pool 4k writes run at about half the speed, so a
 * one-off hiccup (a journal commit, a page under writeback) should cost a
 * short pause (10 times the stall: at most about 9% of that time was
 * blocked), while sustained throttling, which stalls again as soon as writes
 * come back, earns pauses growing to 100 times each stall (about 1% blocked).
 * A flat 100 times (0.1 to 2 s) sent 4k random writes to the pool for 40% of
 * a 5 s benchmark after a single 20 ms stall.
 */
export class InlineWriteGate {
  private resumeAt = 0;
  private episodeStalls = 0;

  /** Whether an inline write may run now (performance.now() milliseconds). */
  open(nowMs: number): boolean {
    return nowMs >= this.resumeAt;
  }

  /** Reports an inline write that took `tookMs` and ended at `nowMs`; returns the pause it started (0: none). */
  record(tookMs: number, nowMs: number): number {
    if (tookMs <= stallMs) return 0;
    const sameEpisode = nowMs - this.resumeAt < episodeGapMs;
    this.episodeStalls = sameEpisode ? this.episodeStalls + 1 : 0;
    const factor = Math.min(pauseFactorMax, pauseFactorFirst * 2 ** Math.min(this.episodeStalls, 8));
    const pauseMs = Math.min(pauseMaxMs, tookMs * factor);
    this.resumeAt = nowMs + pauseMs;
    return pauseMs;
  }
}
