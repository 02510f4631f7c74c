/**
 * npm run bench: our server against nbdkit's file plugin on identical files,
 * measured side by side, job by job, rounds interleaved (each round in a
 * rotated order), so the ratio means something on a shared, noisy machine. Figures, not pass/fail.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { peakRssBytes, startServerProcess } from '../test/helpers/server-process.js';
import { freePort, makeTempDir, run, writeRandomFile } from '../test/helpers/tools.js';
import { figure, roundOrder, runFio, standardJobs } from './fio.js';
import { formatRatio, RoundResults } from './paired-ratio.js';
import { benchCache } from './cache.js';
import { benchMirror } from './mirror.js';
import { benchMetrics } from './metrics.js';
import { benchLargeIo, largeIoJobs } from './large-io.js';
import { benchTls, tlsJobs } from './tls.js';
import { benchRemote, remoteJobs } from './remote.js';
import { benchCheckpoints } from './checkpoints.js';

const seconds = Number(process.env.BENCH_SECONDS ?? 5);
const rounds = Number(process.env.BENCH_ROUNDS ?? 2);
const sizeBytes = Number(process.env.BENCH_SIZE_BYTES ?? 1024 ** 3);

const jobs = standardJobs;

async function startNbdkit(file: string): Promise<{ uri: string; child: ChildProcess }> {
  const port = await freePort();
  const child = spawn('nbdkit', ['-f', '-i', '127.0.0.1', '-p', String(port), 'file', file], { stdio: 'ignore' });
  for (let attempt = 0; attempt < 100; attempt += 1) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    const probe = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${port}`], { timeoutMs: 5000 });
    if (probe.code === 0) return { uri: `nbd://127.0.0.1:${port}`, child };
  }
  child.kill('SIGKILL');
  throw new Error('nbdkit did not start');
}

async function main(): Promise<void> {
  // Checked before 2 GiB of files are written for nothing.
  const picked = process.env.BENCH_JOBS?.split(',');
  const known = [...jobs, ...largeIoJobs, ...tlsJobs, ...remoteJobs].map((job) => job.name);
  const unknown = picked?.filter((name) => !known.includes(name)) ?? [];
  if (unknown.length > 0) {
    throw new Error(`BENCH_JOBS: no job named ${unknown.join(', ')}; the jobs are ${[...new Set(known)].join(', ')}`);
  }
  const dir = makeTempDir('bench');
  const only = process.env.BENCH_ONLY;
  if (only === 'large' || only === 'tls' || only === 'remote' || only === 'checkpoints') {
    // These tables start their own servers on their own files.
    try {
      if (only === 'large') await benchLargeIo({ dir, sizeBytes, seconds, rounds, jobs: picked });
      else if (only === 'tls') await benchTls({ dir, sizeBytes, seconds, rounds, jobs: picked });
      else if (only === 'checkpoints') await benchCheckpoints({ dir, sizeBytes, seconds, rounds });
      else await benchRemote({ dir, sizeBytes, seconds, rounds, jobs: picked });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    return;
  }
  const ours = path.join(dir, 'ours.img');
  const theirs = path.join(dir, 'nbdkit.img');
  console.log(`bench: ${sizeBytes} byte files, ${seconds}s per job, ${rounds} interleaved rounds ` +
    '(best of each shown; ratio: median of the rounds\' own)');
  // Both files are written the same way: the page cache's state differs with
  // how a file was written (a copied file's large folios took 1 MiB writes
  // 1.6x faster than the 4 KiB-written original), which would skew every ratio.
  writeRandomFile(ours, sizeBytes, 7);
  writeRandomFile(theirs, sizeBytes, 7);
  // The peer comparisons run without our cache: nbdkit's file plugin has none either.
  const server = await startServerProcess(['--leg', ours, '--no-unix', '--no-cache']);
  const nbdkit = await startNbdkit(theirs);
  try {
    for (const job of only === undefined || only === 'plain' ? jobs.filter((j) => picked?.includes(j.name) ?? true) : []) {
      const results = new RoundResults<'ours' | 'nbdkit'>();
      const sides = [['ours', server.uri(), ours], ['nbdkit', nbdkit.uri, theirs]] as const;
      for (let round = 0; round < rounds; round += 1) {
        for (const [key, uri, file] of roundOrder(sides, round)) results.add(key, await runFio(uri, job, seconds, sizeBytes, [file]));
      }
      const row = `${job.name.padEnd(20)} nbd-mirror ${figure(job, results.best('ours')).padStart(12)}   ` +
        `nbdkit ${figure(job, results.best('nbdkit')).padStart(12)}   ratio ${formatRatio(results.ratio('ours', 'nbdkit'))}`;
      console.log(row);
    }
    const peak = peakRssBytes(server.pid);
    console.log(`nbd-mirror peak RSS: ${peak === undefined ? 'unknown' : `${(peak / 2 ** 20).toFixed(1)} MiB`}`);
    if (only === undefined) await benchLargeIo({ dir, sizeBytes, seconds, rounds, jobs: picked });
    if (only === undefined) await benchTls({ dir, sizeBytes, seconds, rounds, jobs: picked });
    if (only === undefined) await benchRemote({ dir, sizeBytes, seconds, rounds, jobs: picked });
    if (only === undefined || only === 'mirror') {
      await benchMirror({ dir, singleUri: server.uri(), singleFile: ours, nbdkitUri: nbdkit.uri, nbdkitFile: theirs, sizeBytes, seconds, rounds });
    }
    if (only === undefined || only === 'cache') await benchCache({ dir, sizeBytes, seconds, rounds });
    if (only === undefined || only === 'metrics') await benchMetrics({ dir, sizeBytes, seconds, rounds });
    if (only === undefined) await benchCheckpoints({ dir, sizeBytes, seconds, rounds });
  } finally {
    await server.stop();
    nbdkit.child.kill('SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

await main();
