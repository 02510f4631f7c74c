import type { RemoteLeg } from '../backends/nbd-client/remote-leg.js';
import type { BlockDevice } from '../blockdev/types.js';
import type { LegState } from '../regionlog/format.js';

export interface MirrorLeg {
  slot: number;
  path: string;
  device: BlockDevice;
  /** A remote leg's connection, for its label (which lies past the data `device` serves). */
  remote?: RemoteLeg;
  /** md's write-mostly: read only when no other in-sync leg can serve. */
  writeMostly?: boolean;
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
  /** The legs balanced reads go to: the readable ones that are not write-mostly, or all readable ones if none is. */
  readonly readPreferred: MirrorLeg[];
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
    // Write-mostly legs (a remote replica) serve reads only when no other in-sync leg is left.
    const local = this.readable.filter((leg) => !leg.writeMostly);
    this.readPreferred = local.length > 0 ? local : this.readable;
    this.source = this.readPreferred[0];
  }

  isInSync(leg: MirrorLeg): boolean {
    return this.states[leg.slot] === 'in_sync';
  }
}
