import type { LegRecord } from '../regionlog/format.js';

/**
 * A leg's place in its lifecycle. The log stores it as two fields (state and
 * rebuild mode, docs/region-log.md); here the pair is one value, so a
 * combination that means nothing (in sync "with a bitmap rebuild") cannot be
 * written. Remote legs will add in-memory states between faulty and
 * rebuilding (disconnected, reconnecting, catching up); they go in this table.
 * A faulty leg failed by the operator carries a hold (heldByOperator), set
 * by operator_failed, or by 'held' on a leg already faulty, and ended by any
 * other event.
 */
export type LegLifecycleState = 'empty' | 'in_sync' | 'faulty' | 'rebuilding_bitmap' | 'rebuilding_full';

export type LegEvent =
  /** An I/O error the error policy calls fatal, or a leg missing at start. */
  | 'failed'
  /** nbd-mirror fail. */
  | 'operator_failed'
  /** re-add: the label matches; only set-bit regions are copied. */
  | 're_added'
  /** re-add --force, or a refused leg taken in with --force at start: rebuilt fully. */
  | 'forced'
  /** replace: a new leg in the slot, rebuilt fully. */
  | 'replaced'
  /** The rebuild or re-add finished: every region copied and flushed. */
  | 'caught_up'
  /** nbd-mirror remove. */
  | 'removed'
  /** nbd-mirror fail on a leg already faulty: it stays faulty, and now held (not brought back by the reconnector). */
  | 'held';

export const legStates: readonly LegLifecycleState[] = ['empty', 'in_sync', 'faulty', 'rebuilding_bitmap', 'rebuilding_full'];
export const legEvents: readonly LegEvent[] = ['failed', 'operator_failed', 're_added', 'forced', 'replaced', 'caught_up', 'removed', 'held'];

/** Every allowed edge; any other (state, event) pair is a bug and throws. docs/mirror.md shows this table. */
export const legTransitions: ReadonlyArray<readonly [LegLifecycleState, LegEvent, LegLifecycleState]> = [
  ['in_sync', 'failed', 'faulty'],
  ['rebuilding_bitmap', 'failed', 'faulty'],
  ['rebuilding_full', 'failed', 'faulty'],
  ['in_sync', 'operator_failed', 'faulty'],
  ['rebuilding_bitmap', 'operator_failed', 'faulty'],
  ['rebuilding_full', 'operator_failed', 'faulty'],
  ['faulty', 're_added', 'rebuilding_bitmap'],
  ['faulty', 'forced', 'rebuilding_full'],
  ['in_sync', 'forced', 'rebuilding_full'],
  ['rebuilding_bitmap', 'forced', 'rebuilding_full'],
  ['rebuilding_full', 'forced', 'rebuilding_full'],
  ['in_sync', 'replaced', 'rebuilding_full'],
  ['faulty', 'replaced', 'rebuilding_full'],
  ['empty', 'replaced', 'rebuilding_full'],
  ['rebuilding_bitmap', 'replaced', 'rebuilding_full'],
  ['rebuilding_full', 'replaced', 'rebuilding_full'],
  ['rebuilding_bitmap', 'caught_up', 'in_sync'],
  ['rebuilding_full', 'caught_up', 'in_sync'],
  ['faulty', 'removed', 'empty'],
  ['faulty', 'held', 'faulty'],
];

const table = new Map(legTransitions.map(([from, event, to]) => [`${from} ${event}`, to]));

export class LegStateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LegStateError';
  }
}

/** The lifecycle state a log record describes; a record whose two fields disagree is refused. */
export function lifecycleStateOf(record: Pick<LegRecord, 'state' | 'rebuildMode'>): LegLifecycleState {
  const { state, rebuildMode } = record;
  if (state === 'rebuilding') {
    if (rebuildMode === 'bitmap') return 'rebuilding_bitmap';
    if (rebuildMode === 'full') return 'rebuilding_full';
  } else if (rebuildMode === 'none') {
    return state;
  }
  throw new LegStateError(`a leg record says ${state} with rebuild mode ${rebuildMode}, which means nothing`);
}

export function nextLegState(from: LegLifecycleState, event: LegEvent): LegLifecycleState {
  const to = table.get(`${from} ${event}`);
  if (to === undefined) throw new LegStateError(`leg event ${event} is not allowed in state ${from}`);
  return to;
}

/**
 * The only place a leg record's state changes: asserts the edge, then writes
 * the record's fields for the new state (the caller commits the log).
 * `failedAtMs` is stamped on failure and cleared when the leg is back in
 * sync; `events` is the value stamped on the leg's label when it catches up
 * (0 for a leg that holds nothing of this mirror yet).
 */
export function applyLegEvent(record: LegRecord, event: LegEvent, stamp: { nowMs?: number; events?: bigint } = {}): LegLifecycleState {
  const to = nextLegState(lifecycleStateOf(record), event);
  // Only the operator's own fail sets the hold; every other edge out of or into faulty ends it.
  record.heldByOperator = event === 'operator_failed' || event === 'held';
  switch (to) {
    case 'faulty':
      record.state = 'faulty';
      record.rebuildMode = 'none';
      // A hold put on a leg already faulty keeps when it failed.
      if (event !== 'held') record.failedAtMs = stamp.nowMs ?? Date.now();
      break;
    case 'rebuilding_bitmap':
      record.state = 'rebuilding';
      record.rebuildMode = 'bitmap';
      record.rebuildCheckpointBytes = 0;
      break;
    case 'rebuilding_full':
      record.state = 'rebuilding';
      record.rebuildMode = 'full';
      record.rebuildCheckpointBytes = 0;
      break;
    case 'in_sync':
      if (stamp.events === undefined) throw new LegStateError('a leg catching up needs the events value stamped on its label');
      record.state = 'in_sync';
      record.rebuildMode = 'none';
      record.rebuildCheckpointBytes = 0;
      record.events = stamp.events;
      record.failedAtMs = 0;
      break;
    case 'empty':
      record.state = 'empty';
      record.rebuildMode = 'none';
      record.uuid = Buffer.alloc(16);
      record.events = 0n;
      record.rebuildCheckpointBytes = 0;
      break;
  }
  return to;
}
