import type { Logger } from 'pino';
import type { LegSpec } from '../backends/leg-spec.js';
import type { EventSink } from '../blockdev/events.js';
import { remoteSpecFor } from '../backends/nbd-client/remote-spec.js';
import { MirrorSetupError } from './create.js';

/** A leg that could not be opened because it is not there now (a missing file, a remote that does not answer). */
export class LegUnreachableError extends MirrorSetupError {
  constructor(message: string) {
    super(message);
    this.name = 'LegUnreachableError';
  }
}

/** A remote leg for `uri` in a slot, keeping the slot's failfast settings when it was remote already. */
export function remoteLegSpec(uri: string, slotSpec: LegSpec): LegSpec {
  try {
    return { ...slotSpec, path: uri, thin: undefined,
      remote: remoteSpecFor(uri, { failfastMs: slotSpec.remote?.failfastMs, connectTimeoutMs: slotSpec.remote?.connectTimeoutMs,
        connections: slotSpec.remote?.connections }) };
  } catch (error) {
    throw new MirrorSetupError((error as Error).message);
  }
}

/** A remote leg's link as status shows it. */
export interface RemoteLinkStatus {
  /**
   * connected: in use; reconnecting: away, retried with backoff; refused: answered as another leg; held: failed by
   * the operator; away: faulty and not being retried (the server is stopping).
   */
  link: 'connected' | 'reconnecting' | 'refused' | 'held' | 'away';
  attempts: number;
  problem: string | null;
}

/** A remote leg in a running server's status: its link, and the connections open to it. */
export interface RemoteLegStatus extends RemoteLinkStatus {
  /** Open to the remote (0 while away); more than one only when it advertises multi-conn. */
  connections: number;
  /** Why fewer connections are open than configured, or null. */
  connectionsNote: string | null;
}

export interface ReconnectPolicy {
  /** First wait after a remote leg fails, doubled after each failed attempt up to maxDelayMs. */
  firstDelayMs: number;
  maxDelayMs: number;
}

// Capped at 5 s: a returning replica waits at most that long (one connect attempt per 5 s is cheap), where DRBD waits its connect-int of 10 s.
export const reconnectDefaults: ReconnectPolicy = { firstDelayMs: 500, maxDelayMs: 5000 };

/** What the reconnector needs from the controller (kept narrow so it can be driven in tests). */
export interface ReAddTarget {
  legState(slot: number): string;
  /** The operator failed the leg (durable in its log record): it is not brought back. */
  legHeld(slot: number): boolean;
  reAdd(slot: number): Promise<string>;
}

/**
 * Brings remote legs back by themselves (md needs an operator for this; a
 * network partition heals on its own far more often than a disk does). After
 * a remote leg fails, re-add is tried with exponential backoff: the label is
 * checked first, so the same leg returns with only the regions written while
 * it was away copied, and an export that comes back as something else (wiped,
 * another mirror's leg, stale) is refused, never written, and left for the
 * operator. A leg the operator failed is not brought back: that hold is in
 * the leg's log record, so it survives a restart, and a remote leg faulty in
 * the log without it is watched from start.
 */
export class RemoteReconnector {
  private readonly timers = new Map<number, NodeJS.Timeout>();
  /** Per slot while away: attempts so far and the last problem; refused ones stay until the operator acts. */
  private readonly away = new Map<number, { attempts: number; problem: string | null; refused: boolean }>();
  private stopped = false;

  constructor(private readonly target: ReAddTarget, private readonly logger: Logger, private readonly events: EventSink,
    private readonly policy: ReconnectPolicy = reconnectDefaults) {}

  /** The operator failed this leg on purpose (the hold is in its log record): no more attempts. */
  heldByOperator(slot: number): void {
    this.cancel(slot);
    this.away.delete(slot);
  }

  /** The operator acted on the slot (re-add, replace, remove): what was known of it while away is forgotten. */
  released(slot: number): void {
    this.cancel(slot);
    this.away.delete(slot);
  }

  /** The link of a remote leg in `slot` for status (`faulty`: its state in the log). */
  linkStatus(slot: number, faulty: boolean): RemoteLinkStatus {
    if (!faulty) return { link: 'connected', attempts: 0, problem: null };
    if (this.target.legHeld(slot)) return { link: 'held', attempts: 0, problem: null };
    const away = this.away.get(slot);
    if (away === undefined) {
      // Status must not claim a reconnect nobody runs (a stopping server, or a slot nothing watches).
      return { link: 'away', attempts: 0, problem: this.stopped ? 'the server is stopping' : 'not being reconnected' };
    }
    return { link: away.refused ? 'refused' : 'reconnecting', attempts: away.attempts, problem: away.problem };
  }

  /** A remote leg in `slot` failed (or is faulty in the log at start): start trying to bring it back. */
  watch(slot: number, path: string): void {
    if (this.stopped || this.target.legHeld(slot) || this.timers.has(slot)) return;
    this.away.set(slot, { attempts: 0, problem: null, refused: false });
    this.schedule(slot, path, this.policy.firstDelayMs, 1);
  }

  stop(): void {
    this.stopped = true;
    for (const slot of [...this.timers.keys()]) this.cancel(slot);
  }

  private cancel(slot: number): void {
    clearTimeout(this.timers.get(slot));
    this.timers.delete(slot);
  }

  private schedule(slot: number, path: string, delayMs: number, attempt: number): void {
    const timer = setTimeout(() => {
      void this.attempt(slot, path, delayMs, attempt);
    }, delayMs);
    timer.unref();
    this.timers.set(slot, timer);
  }

  private async attempt(slot: number, path: string, delayMs: number, attempt: number): Promise<void> {
    if (this.stopped || this.target.legHeld(slot) || this.target.legState(slot) !== 'faulty') {
      this.timers.delete(slot);
      return;
    }
    const away = this.away.get(slot) ?? { attempts: 0, problem: null, refused: false };
    this.away.set(slot, away);
    away.attempts = attempt;
    try {
      const outcome = await this.target.reAdd(slot);
      this.timers.delete(slot);
      this.away.delete(slot);
      this.logger.info({ slot, path, attempt }, `remote leg is back: ${outcome}`);
      this.events({ event: 'leg-reconnected', slot, path, attempt });
    } catch (error) {
      const message = (error as Error).message;
      away.problem = message;
      // Only a MirrorSetupError is a verdict on the leg (its label refused); anything else (the link dropping
      // between the label check and the open, a log commit that failed) is worth another try.
      if (error instanceof LegUnreachableError || !(error instanceof MirrorSetupError)) {
        const next = Math.min(delayMs * 2, this.policy.maxDelayMs);
        // Logged at the first attempts and then at most about once a minute, so a long outage does not flood the log.
        if (attempt <= 3 || attempt % Math.max(1, Math.round(60_000 / this.policy.maxDelayMs)) === 0) {
          this.logger.warn({ slot, path, attempt, nextInMs: next, problem: message }, 'remote leg still unreachable; retrying');
        }
        this.timers.delete(slot);
        if (!this.stopped) this.schedule(slot, path, next, attempt + 1);
        return;
      }
      this.timers.delete(slot);
      // The operator (or another attempt) acted on the slot meanwhile: nothing was refused.
      if (this.target.legState(slot) !== 'faulty') return;
      away.refused = true;
      this.logger.error({ slot, path, problem: message },
        'remote leg answered but was refused: it is not written to; an operator must re-add --force, replace or remove it');
      this.events({ event: 'leg-refused', slot, path, reason: message });
    }
  }
}
