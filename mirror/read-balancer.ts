import type { MirrorLeg } from './generation.js';

export type ReadPolicy = 'round-robin' | 'least-pending' | 'preferred';

/**
 * Which in-sync leg serves a read that any of them may serve (a region that
 * may differ between legs is read from the source leg instead, lesson 5):
 * round-robin, the leg with the fewest reads in flight, or a preferred leg
 * (md's write-mostly, the other way round).
 */
export class ReadBalancer {
  private roundRobin = 0;

  constructor(private readonly policy: ReadPolicy, private readonly preferredSlot: number | undefined) {}

  choose(readable: readonly MirrorLeg[]): MirrorLeg {
    switch (this.policy) {
      case 'preferred':
        return readable.find((leg) => leg.slot === this.preferredSlot) ?? readable[0];
      case 'least-pending':
        return readable.reduce((best, leg) => (leg.pendingReads < best.pendingReads ? leg : best));
      default:
        this.roundRobin = (this.roundRobin + 1) % readable.length;
        return readable[this.roundRobin];
    }
  }
}
