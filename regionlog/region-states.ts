/**
 * The region state machine (docs/region-log.md, "Region states"). One table
 * holds every allowed transition; anything else is a bug and throws, so a
 * wrong caller fails loudly instead of clearing a bit it must not clear.
 *
 * The on-disk bit is set in every state but CLEAN. The only way back to CLEAN
 * is CLEAN_CANDIDATE + sync_succeeded: the region was quiet when a sync of
 * every leg began and no write touched it before the sync finished.
 */
export const RegionState = {
  CLEAN: 0,
  /** Writes in flight; the bit is (being made) durable. */
  DIRTY: 1,
  /** Writes drained, bit still set on disk. */
  MAYBE_DIRTY: 2,
  /** Chosen by the sweeper; a sync of every leg is running. */
  CLEAN_CANDIDATE: 3,
} as const;
export type RegionState = (typeof RegionState)[keyof typeof RegionState];

export const regionStateNames: Record<RegionState, string> = {
  0: 'CLEAN', 1: 'DIRTY', 2: 'MAYBE_DIRTY', 3: 'CLEAN_CANDIDATE',
};

export type RegionEvent =
  /** A write, trim or write-zeroes to the region begins. */
  | 'write_start'
  /** The last in-flight write to the region ended. */
  | 'writes_drained'
  /** The bit was found set at start-up, or set by resync/repair or ahead of a sequential writer, with no write in flight. */
  | 'bit_loaded'
  /** The sweeper picks the region as a candidate and a sync of every leg begins. */
  | 'sweep_begin'
  /** That sync succeeded: every leg flushed, the region untouched meanwhile. */
  | 'sync_succeeded'
  /** That sync failed (or a leg is missing): nothing may be cleared. */
  | 'sync_failed';

export const regionEvents: RegionEvent[] = ['write_start', 'writes_drained', 'bit_loaded', 'sweep_begin', 'sync_succeeded', 'sync_failed'];

const S = RegionState;
export const regionTransitions: ReadonlyArray<readonly [RegionState, RegionEvent, RegionState]> = [
  [S.CLEAN, 'write_start', S.DIRTY],
  [S.DIRTY, 'write_start', S.DIRTY],
  [S.MAYBE_DIRTY, 'write_start', S.DIRTY],
  [S.CLEAN_CANDIDATE, 'write_start', S.DIRTY],
  [S.DIRTY, 'writes_drained', S.MAYBE_DIRTY],
  [S.CLEAN, 'bit_loaded', S.MAYBE_DIRTY],
  [S.MAYBE_DIRTY, 'bit_loaded', S.MAYBE_DIRTY],
  [S.MAYBE_DIRTY, 'sweep_begin', S.CLEAN_CANDIDATE],
  [S.CLEAN_CANDIDATE, 'sync_succeeded', S.CLEAN],
  [S.CLEAN_CANDIDATE, 'sync_failed', S.MAYBE_DIRTY],
];

// A flat array indexed by state and event: the write path consults it on every request.
const table = new Int8Array(4 * regionEvents.length).fill(-1);
for (const [from, event, to] of regionTransitions) table[from * regionEvents.length + regionEvents.indexOf(event)] = to;
const eventIndex = new Map(regionEvents.map((event, index) => [event, index]));

export class RegionStateError extends Error {
  constructor(readonly from: RegionState, readonly event: RegionEvent) {
    super(`region state machine: ${event} is not allowed in ${regionStateNames[from]}`);
    this.name = 'RegionStateError';
  }
}

export function nextRegionState(from: RegionState, event: RegionEvent): RegionState {
  const to = table[from * regionEvents.length + eventIndex.get(event)!];
  if (to === undefined || to < 0) throw new RegionStateError(from, event);
  return to as RegionState;
}
