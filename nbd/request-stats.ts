/** Upper bounds (seconds) of the request latency histogram's buckets; +Inf is implied. */
export const latencyBucketsSeconds = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Command numbers this records (READ .. BLOCK_STATUS). */
const commandSlots = 8;

/**
 * Per-command counts, bytes, errors and a latency histogram, recorded on the
 * request path into typed arrays (a few additions per request), and turned
 * into Prometheus series only when scraped. A server without metrics has no
 * RequestStats and pays nothing.
 */
export class RequestStats {
  readonly count = new Float64Array(commandSlots);
  readonly bytes = new Float64Array(commandSlots);
  readonly secondsSum = new Float64Array(commandSlots);
  /** Cumulative counts are computed at scrape time; this holds per-bucket counts, +Inf last. */
  readonly buckets = new Float64Array(commandSlots * (latencyBucketsSeconds.length + 1));
  /** By "COMMAND errno". */
  readonly errors = new Map<number, Map<string, number>>();

  record(command: number, lengthBytes: number, startedMs: number, errorCode: string | undefined): void {
    if (command >= commandSlots) return;
    const seconds = (performance.now() - startedMs) / 1000;
    this.count[command] += 1;
    this.bytes[command] += lengthBytes;
    this.secondsSum[command] += seconds;
    let bucket = 0;
    while (bucket < latencyBucketsSeconds.length && seconds > latencyBucketsSeconds[bucket]) bucket += 1;
    this.buckets[command * (latencyBucketsSeconds.length + 1) + bucket] += 1;
    if (errorCode !== undefined) {
      let byCode = this.errors.get(command);
      if (!byCode) this.errors.set(command, (byCode = new Map()));
      byCode.set(errorCode, (byCode.get(errorCode) ?? 0) + 1);
    }
  }
}
