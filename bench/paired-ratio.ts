import type { FioResult } from './fio.js';

/**
 * A ratio between two servers taken round by round. Each round runs the two
 * within minutes of each other, while this machine changes speed between
 * rounds (the same server on the same job ran 29k and 39k IOPS half an hour
 * apart): the ratio of each side's best run pairs figures from different
 * rounds, and moved by 0.15-0.3 from one table to the next. A round's own
 * ratio sees both sides on the same machine state; the median of those,
 * with their range, says both what the ratio is and how far to trust it.
 */
export interface PairedRatio {
  median: number;
  min: number;
  max: number;
  rounds: number;
}

/** `numerator[i] / denominator[i]` for each round i both sides ran; undefined if none. */
export function pairedRatio(numerator: readonly number[], denominator: readonly number[]): PairedRatio | undefined {
  const ratios: number[] = [];
  for (let round = 0; round < Math.min(numerator.length, denominator.length); round += 1) {
    if (denominator[round] > 0) ratios.push(numerator[round] / denominator[round]);
  }
  if (ratios.length === 0) return undefined;
  ratios.sort((a, b) => a - b);
  const middle = Math.floor(ratios.length / 2);
  const median = ratios.length % 2 === 1 ? ratios[middle] : (ratios[middle - 1] + ratios[middle]) / 2;
  return { median, min: ratios[0], max: ratios[ratios.length - 1], rounds: ratios.length };
}

/** "0.85x" for one round, "0.85x (0.80-0.91)" for several. */
export function formatRatio(ratio: PairedRatio): string {
  const median = `${ratio.median.toFixed(2)}x`;
  return ratio.rounds === 1 ? median : `${median} (${ratio.min.toFixed(2)}-${ratio.max.toFixed(2)})`;
}

/**
 * Each side's best run of a job and its IOPS round by round, for the rows
 * and the paired ratios. A run is fio's result, or anything carrying its
 * IOPS (the side-by-side tables add the server's CPU per request).
 */
export class RoundResults<Side extends string, Run extends { iops: number } = FioResult> {
  private readonly bestRuns = new Map<Side, Run>();
  private readonly iopsByRound = new Map<Side, number[]>();

  add(side: Side, result: Run): void {
    const previous = this.bestRuns.get(side);
    if (previous === undefined || result.iops > previous.iops) this.bestRuns.set(side, result);
    this.iopsByRound.set(side, [...this.iopsByRound.get(side) ?? [], result.iops]);
  }

  ran(side: Side): boolean {
    return this.bestRuns.has(side);
  }

  best(side: Side): Run {
    const result = this.bestRuns.get(side);
    if (result === undefined) throw new Error(`no run of ${side}`);
    return result;
  }

  ratio(numerator: Side, denominator: Side): PairedRatio {
    const ratio = pairedRatio(this.iopsByRound.get(numerator) ?? [], this.iopsByRound.get(denominator) ?? []);
    if (ratio === undefined) throw new Error(`no round ran both ${numerator} and ${denominator}`);
    return ratio;
  }
}
