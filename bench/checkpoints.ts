/**
 * The cost of changed-block tracking: the default configuration (mirror,
 * log, cache) with two checkpoints against the same without any, side by
 * side on identical prefilled files. With no checkpoint the tracking device
 * passes requests through, so "off" is what every server without
 * checkpoints runs. Target (docs/changed-blocks.md): at most 5% slower.
 */
import path from 'node:path';
import { cliPath, startServerProcess } from '../test/helpers/server-process.js';
import { adminRequest } from '../tools/admin-client.js';
import { standardJobs } from './fio.js';
import { fill } from './mirror.js';
import { type BenchServer, measureJob, printJob, printPeakMemory } from './side-by-side.js';

const checkpointJobs = standardJobs.filter((job) => job.name === '4k-randwrite-qd32' || job.name === '1m-seqwrite-qd8');

export async function benchCheckpoints(options: { dir: string; sizeBytes: number; seconds: number; rounds: number }): Promise<void> {
  const { dir, sizeBytes, seconds, rounds } = options;
  console.log('\ncheckpoints: default config (mirror + log + cache) with two checkpoints (tracked) vs none (untracked)');
  const servers: Array<BenchServer<'tracked' | 'untracked'>> = [];
  try {
    for (const name of ['tracked', 'untracked'] as const) {
      const legs = [0, 1].map((slot) => path.join(dir, `checkpoints-${name}-leg${slot}.img`));
      const admin = path.join(dir, `checkpoints-${name}.sock`);
      const server = await startServerProcess(['--leg', ...legs, '--log', path.join(dir, `checkpoints-${name}.log`), '--size', String(sizeBytes),
        '--no-unix', '--admin', admin, '--cache'], { cli: cliPath });
      const side: BenchServer<'tracked' | 'untracked'> = { name, uri: server.uri(), pid: server.pid, files: legs, stop: async () => { await server.stop(); } };
      servers.push(side);
      await fill(side.uri, sizeBytes);
      if (name === 'tracked') for (const checkpoint of ['full', 'incremental']) await adminRequest(admin, { command: 'checkpoint-create', name: checkpoint });
    }
    for (const job of checkpointJobs) {
      const results = await measureJob(servers, job, { seconds, rounds, sizeBytes });
      printJob(job, servers, results, [['tracked', 'untracked']]);
    }
    const bitmapBytes = Math.ceil(sizeBytes / (64 * 1024) / 8);
    console.log(`  memory for tracking: ${bitmapBytes} bytes per checkpoint for ${sizeBytes} bytes (${(2 ** 40 / (64 * 1024) / 8 / 2 ** 20).toFixed(0)} MiB per TiB)`);
    printPeakMemory(servers);
  } finally {
    for (const server of servers) await server.stop().catch(() => undefined);
  }
}
