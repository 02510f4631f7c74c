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
 *
 * Not added: --initial-old-space-size=64, a floor under the old generation's
 * limit. Even with the flag above, the mirror without the cache runs a full
 * mark-compact every 100-150 ms under 4 KiB random writes (89 in one 8 s run;
 * 18 with the cache), each a few milliseconds on a 10 MB heap. The floor
 * stops them (0 and 3), but 4 alternating pairs per job showed no gain
 * beyond this machine's noise: 0.94-1.13x without the cache and 0.98-1.00x
 * with it on 4k writes, 64 KiB mixed, 1 MiB writes and 4k reads.
 */
export const serverNodeFlags: readonly string[] = ['--no-memory-reducer'];

/** The flags above that this process was not started with. */
export function missingServerNodeFlags(): string[] {
  return serverNodeFlags.filter((flag) => !process.execArgv.includes(flag));
}
