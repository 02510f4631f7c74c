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
 * --initial-old-space-size=64: a floor under the old generation's limit.
 * Without it, the limit follows the live heap (13-15 MB). Under 4 KiB random
 * writes through the cache, what the cache holds across scavenges (pages
 * and their views, writebacks in flight) grew the old generation by about
 * half a megabyte per scavenge (--trace-gc-verbose), so a full mark-compact
 * ran every 150-250 ms (16-31 in a 7 s run), each a few milliseconds of
 * marking on the loop and more on a helper thread. With the floor: 3-5. Measured per
 * server process (user + system CPU from /proc over the job, files settled
 * as the bench does, 1 GiB prefilled, alternating pairs): CPU per request
 * through the cache at 0.79-0.87x in four pairs of six on 4k random writes
 * at QD32 and 1.01-1.09x in the other two, 0.94-1.02x at QD1, 0.94-0.98x on
 * 4k write + flush; 64 KiB mixed, 4k reads and 1 MiB reads and writes moved
 * inside the noise, with or without the cache. Peak RSS grew by 2-10 MB.
 * bench:compare against the build before it (4 rounds, cache): 4k random
 * writes QD32 1.03x (0.94-1.05), CPU per request 0.96x; QD1 0.99x, 1.07x;
 * 64 KiB mixed 1.44x (1.07-1.90), 0.87x. Without the cache, 4k random
 * writes at QD1 and QD32: 1.01x and 1.05x, CPU per request 1.00x and 0.97x.
 * On 2026-12-03 the floor was left out after throughput pairs showed no gain
 * beyond noise; the full collections it saves are CPU the other jobs on
 * these 2-vCPU machines (the client, the kernel) get back, which CPU per
 * request shows and throughput did not.
 */
export const serverNodeFlags: readonly string[] = ['--no-memory-reducer', '--initial-old-space-size=64'];

/** The flags above that this process was not started with. */
export function missingServerNodeFlags(): string[] {
  return serverNodeFlags.filter((flag) => !process.execArgv.includes(flag));
}
