/**
 * Node flags the server is started with (bin/nbd-mirror.js, `npm start`,
 * contrib/nbd-mirror.service through the bin, the test and bench helpers).
 *
 * --no-memory-reducer: once the server has been idle for a few seconds,
 * V8's memory reducer shrinks the heap and then keeps growing it slowly
 * until the old generation has grown by 10 MB. This server's old generation
 * stays near 15 MB, so that never happens, and under the next load every
 * fill of the young generation became a full mark-compact (one every 60 ms,
 * a fifth of the CPU in marking and sweeping). 4 KiB random writes
 * through the cache, a minute after the fill, ran at 0.60-0.66x the mirror
 * without the cache in the same rounds; with this flag, at 0.80-0.84x. The
 * heap it would have given back is a few tens of MB.
 */
export const serverNodeFlags: readonly string[] = ['--no-memory-reducer'];

/** The flags above that this process was not started with. */
export function missingServerNodeFlags(): string[] {
  return serverNodeFlags.filter((flag) => !process.execArgv.includes(flag));
}
