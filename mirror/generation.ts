import type { BlockDevice } from '../blockdev/types.js';
import type { LegState } from '../regionlog/format.js';

export interface MirrorLeg {
  slot: number;
  path: string;
  device: BlockDevice;
  /** Reads in flight on this leg, for the least-pending policy. */
  pendingReads: number;
}

/**
 * An immutable view of the legs. A request takes the current generation when
 * it starts and uses it to the end; a leg failing, returning or being
 * replaced creates a new generation for new requests, and nothing a running
 * request holds is changed under it.
 */
export class Generation {
  /** Requests still running on this generation. */
  refs = 0;
  /** Legs served reads: in sync. */
  readonly readable: MirrorLeg[];
  /** Legs given every write: in sync, plus legs being rebuilt. */
  readonly writable: MirrorLeg[];
  /** The leg regions that may differ are read from and resynced from. */
  readonly source: MirrorLeg | undefined;

  constructor(
    readonly number: number,
    /** By slot; undefined where no device is open. */
    readonly legs: ReadonlyArray<MirrorLeg | undefined>,
    readonly states: ReadonlyArray<LegState>,
  ) {
    this.readable = legs.filter((leg, slot): leg is MirrorLeg => leg !== undefined && states[slot] === 'in_sync');
    this.writable = legs.filter((leg, slot): leg is MirrorLeg =>
      leg !== undefined && (states[slot] === 'in_sync' || states[slot] === 'rebuilding'));
    this.source = this.readable[0];
  }

  isInSync(leg: MirrorLeg): boolean {
    return this.states[leg.slot] === 'in_sync';
  }
}
