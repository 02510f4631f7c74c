/**
 * The page cache's part of npm run bench: 4k random writes on the mirror with
 * and without the cache, side by side; how long one flush takes with many
 * dirty pages; and peak memory against the configured dirty limit.
 */
import fs from 'node:fs';
import path from 'node:path';
import { peakRssBytes, projectRoot, startServerProcess, type ServerProcess } from '../test/helpers/server-process.js';
import { run } from '../test/helpers/tools.js';
import { figure, type FioJob, roundOrder, runFio } from './fio.js';
import { formatRatio, RoundResults } from './paired-ratio.js';
import { fill, mirrorArgs, mirrorLegs } from './mirror.js';

const dirtyLimitMiB = 64;
/** Capacity equal to the dirty limit: peak memory is then compared against the dirty limit alone. */
const cacheSizeMiB = 64;

const cacheJobs: FioJob[] = [
  { name: '4k-randwrite-qd1', rw: 'randwrite', blockSize: '4k', iodepth: 1 },
  { name: '4k-randwrite-qd32', rw: 'randwrite', blockSize: '4k', iodepth: 32 },
  { name: '4k-randwrite-qd32-fsync64', rw: 'randwrite', blockSize: '4k', iodepth: 32, fsyncEvery: 64 },
];

function cacheConfig(dir: string): string {
  const file = path.join(dir, 'cache-bench.yaml');
  fs.writeFileSync(file, `listen: { tcp: "127.0.0.1:0", unix: null }
cache: { size: ${cacheSizeMiB}MiB, dirtyLimit: ${dirtyLimitMiB}MiB, dirtyExpireMs: 5000 }
storage: { legs: [ { path: unused.img } ] }
`);
  return file;
}

async function flushLatency(server: ServerProcess, pages: number): Promise<{ flushSeconds: number; writeSeconds: number }> {
  const result = await run('/usr/bin/python3', [path.join(projectRoot, 'bench', 'flush_latency.py'), server.uri(), String(pages)],
    { timeoutMs: 600_000 });
  if (result.code !== 0) throw new Error(`flush latency probe failed: ${result.stderr}`);
  return JSON.parse(result.stdout) as { flushSeconds: number; writeSeconds: number };
}

export async function benchCache(options: { dir: string; sizeBytes: number; seconds: number; rounds: number }): Promise<void> {
  const { dir, sizeBytes, seconds, rounds } = options;
  console.log(`\npage cache (dirty limit ${dirtyLimitMiB} MiB, ${cacheSizeMiB} MiB cap) over the 2-leg mirror, vs the same mirror without it`);
  const config = cacheConfig(dir);
  const withArgs = ['--config', config, ...mirrorArgs(dir, 'cached', sizeBytes, 3000, true)];
  const without = await startServerProcess(mirrorArgs(dir, 'uncached', sizeBytes, 3000));
  const cached = await startServerProcess(withArgs);
  try {
    await fill(without.uri(), sizeBytes);
    await fill(cached.uri(), sizeBytes);
    for (const job of cacheJobs) {
      const results = new RoundResults<'cached' | 'without'>();
      const sides = [['cached', cached.uri(), 'cached'], ['without', without.uri(), 'uncached']] as const;
      for (let round = 0; round < rounds; round += 1) {
        for (const [key, uri, name] of roundOrder(sides, round)) results.add(key, await runFio(uri, job, seconds, sizeBytes, mirrorLegs(dir, name)));
      }
      console.log(`${job.name.padEnd(26)} cache ${figure(job, results.best('cached')).padStart(12)}   ` +
        `no cache ${figure(job, results.best('without')).padStart(12)}   ratio ${formatRatio(results.ratio('cached', 'without'))}`);
    }
    for (const pages of [4096, 16384]) {
      const withCache = await flushLatency(cached, pages);
      const withoutCache = await flushLatency(without, pages);
      console.log(`flush after ${String(pages).padStart(5)} random 4k writes   cache ${(withCache.flushSeconds * 1000).toFixed(0).padStart(6)} ms ` +
        `(writes took ${(withCache.writeSeconds * 1000).toFixed(0)} ms)   no cache ${(withoutCache.flushSeconds * 1000).toFixed(0).padStart(6)} ms ` +
        `(writes took ${(withoutCache.writeSeconds * 1000).toFixed(0)} ms)`);
    }
    const cachedPeak = peakRssBytes(cached.pid);
    const plainPeak = peakRssBytes(without.pid);
    if (cachedPeak !== undefined && plainPeak !== undefined) {
      const overheadMiB = (cachedPeak - plainPeak) / 2 ** 20;
      console.log(`peak RSS: cache ${(cachedPeak / 2 ** 20).toFixed(1)} MiB, no cache ${(plainPeak / 2 ** 20).toFixed(1)} MiB; ` +
        `the cache added ${overheadMiB.toFixed(1)} MiB = ${dirtyLimitMiB} MiB dirty limit + ${(overheadMiB - dirtyLimitMiB).toFixed(1)} MiB overhead`);
    }
  } finally {
    await cached.stop();
    await without.stop();
  }
}
