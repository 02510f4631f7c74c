import assert from 'node:assert/strict';
import { type Clock, systemClock } from '../sys/clock.js';

/** A window starts this short and doubles while waits stay within the maximum (QEMU's rule). */
const windowStartUs = 4;

/** limits.pollMaxMicroseconds: the window's maximum (0: never poll). */
export const pollMaxBounds = { min: 0, max: 10_000, default: 100 };

/**
 * Adaptive polling after input, as QEMU's event loop does (`poll-max-ns`,
 * util/aio-posix.c): after bytes arrive, the event loop keeps polling for up
 * to a window instead of sleeping, so the next request of a client that waits
 * for each reply is seen without a wake-up. On this 2-vCPU VM a sleeping
 * server's wake-up cost more than the rest of a 4k request: at QD1, 4k random
 * reads ran at 15-16k IOPS sleeping and 31-33k polling, 4k random writes at
 * 14-15k and 25-26k (nbdkit file, which does not poll: 19-22k), for the price
 * of a busy core while such a client runs.
 *
 * The window adapts to how long the loop actually waited for input: a wait
 * within the window needs no change; one longer than the maximum shows input
 * is too sparse to poll for, and polling stops; one in between doubles the
 * window (from 4 us, up to the maximum). An idle server or one whose clients
 * pause longer than the maximum between requests does not poll.
 *
 * The default maximum is 100 us, not QEMU's 32 us: the window grows only while
 * waits measured while sleeping stay under the maximum, and a QD1 cycle of
 * 62-67 us with about 11 us of work left the loop asleep for more than 50 us,
 * so a 50 us maximum never started polling.
 *
 * Polling is a chain of setImmediate callbacks: with one pending, libuv
 * polls its descriptors with a zero timeout, and other callbacks run as usual.
 *
 * Not while a flush waits on the device: a flush is the barrier its client
 * waits for, not about to send more, and its fdatasync outlasts the window,
 * so the window would only spin to its end, on a core the thread doing the
 * sync and the client need. 4k write plus flush at QD1 over the mirror spent
 * about 100 us of that per pair: with polling 2522-2637 pairs per second at
 * 214-220 us of server CPU each, without any polling 2696-2760 at 157-165 us
 * (the C mirror: 2451-2592 at 129-131 us). The flush's reply restarts
 * polling (replySent), for the request that follows it. Other requests that
 * wait (thread-pool writes and reads) keep the window: with them, the client
 * usually has more to send, and 1 MiB writes at QD8 ran 0.93-0.96x without it.
 */
export class InputPoll {
  private windowUs = 0;
  private polling = false;
  private pollUntilMs = 0;
  /** When the loop last became free to sleep: the end of the last window, or of the last turn with input. */
  private idleSinceMs = 0;
  /** Flushes waiting on the device (see flushWaiting). */
  private waitingFlushes = 0;

  constructor(private readonly maxUs: number, private readonly clock: Pick<Clock, 'now'> = systemClock) {}

  /** Bytes arrived on some connection. */
  inputArrived(): void {
    if (!(this.maxUs > 0)) return;
    const nowMs = this.clock.now();
    if (!this.polling) {
      this.adapt(this.windowUs + (nowMs - this.idleSinceMs) * 1000);
      // Even with no window, one callback: it runs once this turn's work is done, which is when the
      // loop becomes free to sleep, so the next wait is measured from there.
      this.startPolling();
    }
    this.pollUntilMs = nowMs + this.windowUs / 1000;
  }

  /**
   * A request finished after its input turn (a log commit, a thread-pool
   * write): its reply is going out now, and a client waiting for it will send
   * its next request soon, so poll as after input. Without this, one slow
   * request made the next wait look long and stopped polling.
   */
  replySent(flush: boolean): void {
    if (flush) {
      assert(this.waitingFlushes > 0, 'a flush reply for no waiting flush');
      this.waitingFlushes -= 1;
    }
    if (!(this.maxUs > 0)) return;
    const nowMs = this.clock.now();
    if (!this.polling) this.startPolling();
    this.pollUntilMs = Math.max(this.pollUntilMs, nowMs + this.windowUs / 1000);
  }

  /** A flush was not answered in its turn: it waits on the device until its replySent(true). */
  flushWaiting(): void {
    this.waitingFlushes += 1;
  }

  /** The current window (tests and status). */
  get currentWindowUs(): number {
    return this.windowUs;
  }

  /** Whether a poll chain is pending (tests: it must always end). */
  get isPolling(): boolean {
    return this.polling;
  }

  private startPolling(): void {
    this.polling = true;
    setImmediate(this.poll);
  }

  private adapt(waitedUs: number): void {
    this.windowUs = nextPollWindowUs(this.windowUs, waitedUs, this.maxUs);
  }

  private readonly poll = (): void => {
    const nowMs = this.clock.now();
    if (this.windowUs > 0 && nowMs < this.pollUntilMs && this.waitingFlushes === 0) {
      setImmediate(this.poll);
      return;
    }
    this.polling = false;
    this.idleSinceMs = nowMs;
  };
}

/**
 * QEMU's rule (adjust_polling_time): `waitedUs` is how long the loop waited
 * for input, polling and sleeping. Within the window: keep it. Longer than the
 * maximum: stop polling. In between: double it (from 4 us), up to the maximum.
 */
export function nextPollWindowUs(windowUs: number, waitedUs: number, maxUs: number): number {
  if (waitedUs <= windowUs) return windowUs;
  if (waitedUs > maxUs) return 0;
  return Math.min(maxUs, windowUs === 0 ? windowStartUs : windowUs * 2);
}
