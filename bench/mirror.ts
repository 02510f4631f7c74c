/**
 * The mirror's part of npm run bench: two legs against the single-file
 * export and nbdkit file, side by side; what the region log costs on 4k
 * random writes; and how much a crash under sustained random writes makes
 * recovery resync.
 */
import path from 'node:path';
import { adminRequest } from '../tools/admin-client.js';
import { startServerProcess, type ServerProcess } from '../test/helpers/server-process.js';
import { figure, type FioJob, type FioResult, roundOrder, runFio } from './fio.js';
import { formatRatio, RoundResults } from './paired-ratio.js';
import { run } from '../test/helpers/tools.js';

const mirrorJobs: FioJob[] = [
  { name: '4k-randwrite-qd1', rw: 'randwrite', blockSize: '4k', iodepth: 1 },
  { name: '4k-randwrite-qd32', rw: 'randwrite', blockSize: '4k', iodepth: 32 },
  { name: '4k-randread-qd32', rw: 'randread', blockSize: '4k', iodepth: 32 },
  { name: '1m-seqwrite-qd8', rw: 'write', blockSize: '1m', iodepth: 8 },
];

/** A two-leg mirror's serve flags; without the page cache unless asked (its settings then come from the --config file). */
export function mirrorArgs(dir: string, name: string, sizeBytes: number, sweepIntervalMs: number, cache = false): string[] {
  return ['--leg', ...mirrorLegs(dir, name), '--log', path.join(dir, `${name}.log`),
    '--admin', path.join(dir, `${name}.sock`), '--size', String(sizeBytes), '--sweep-interval-ms', String(sweepIntervalMs), '--no-unix',
    cache ? '--cache' : '--no-cache'];
}

/** The leg files of the mirror mirrorArgs names. */
export function mirrorLegs(dir: string, name: string): string[] {
  return [path.join(dir, `${name}-0.img`), path.join(dir, `${name}-1.img`)];
}

export async function fill(uri: string, sizeBytes: number, env?: NodeJS.ProcessEnv): Promise<void> {
  const result = await run('fio', ['--name=fill', '--ioengine=nbd', `--uri=${uri}`, '--rw=write', '--bs=1m', '--iodepth=8',
    `--size=${sizeBytes}`], { timeoutMs: 600_000, env });
  if (result.code !== 0) throw new Error(`fill failed: ${result.stderr}`);
}

export async function benchMirror(options: { dir: string; singleUri: string; singleFile: string; nbdkitUri: string; nbdkitFile: string;
  sizeBytes: number; seconds: number; rounds: number }):
  Promise<void> {
  const { dir, sizeBytes, seconds, rounds } = options;
  console.log('\nmirror (2 legs, region log, sweeper every 3 s) vs single-file export vs nbdkit file');
  const mirror = await startServerProcess(mirrorArgs(dir, 'mirror', sizeBytes, 3000));
  try {
    await fill(mirror.uri(), sizeBytes);
    for (const job of mirrorJobs) {
      const results = new RoundResults<'mirror' | 'single' | 'nbdkit'>();
      for (let round = 0; round < rounds; round += 1) {
        const servers = [['mirror', mirror.uri(), mirrorLegs(dir, 'mirror')], ['single', options.singleUri, [options.singleFile]],
          ['nbdkit', options.nbdkitUri, [options.nbdkitFile]]] as const;
        for (const [key, uri, files] of roundOrder(servers, round)) results.add(key, await runFio(uri, job, seconds, sizeBytes, [...files]));
      }
      console.log(`${job.name.padEnd(20)} mirror ${figure(job, results.best('mirror')).padStart(12)}   ` +
        `single ${figure(job, results.best('single')).padStart(12)}   nbdkit ${figure(job, results.best('nbdkit')).padStart(12)}   ` +
        `mirror/single ${formatRatio(results.ratio('mirror', 'single'))}   mirror/nbdkit ${formatRatio(results.ratio('mirror', 'nbdkit'))}`);
    }
  } finally {
    await mirror.stop();
  }
  await logCost(options);
  await resyncAfterCrash(options);
}

async function status(server: ServerProcess, dir: string, name: string): Promise<{ logCommits: number; regions: { bitsSet: number } }> {
  void server;
  return await adminRequest(path.join(dir, `${name}.sock`), { command: 'status' }) as { logCommits: number; regions: { bitsSet: number } };
}

/**
 * The log is written when a write hits a region whose bit is clear. With the
 * sweeper clearing bits every 100 ms, random writes keep re-dirtying regions
 * (worst case); with the sweeper off, bits stay set and the log is idle.
 */
async function logCost(options: { dir: string; sizeBytes: number; seconds: number; rounds: number }): Promise<void> {
  console.log('\nregion log cost on 4k random writes (QD1 and QD32): sweeper every 100 ms (log busy) vs sweeper off (log idle)');
  for (const job of mirrorJobs.slice(0, 2)) {
    const row: string[] = [];
    const iops: number[] = [];
    for (const [name, interval] of [['busy', 100], ['idle', 0]] as const) {
      const server = await startServerProcess(mirrorArgs(options.dir, `log-${name}`, options.sizeBytes, interval));
      try {
        const before = await status(server, options.dir, `log-${name}`);
        let best: FioResult | undefined;
        for (let round = 0; round < options.rounds; round += 1) {
          const result = await runFio(server.uri(), job, options.seconds, options.sizeBytes, mirrorLegs(options.dir, `log-${name}`));
          if (!best || result.iops > best.iops) best = result;
        }
        const after = await status(server, options.dir, `log-${name}`);
        iops.push(best!.iops);
        row.push(`${name} ${Math.round(best!.iops)} IOPS (${after.logCommits - before.logCommits} log commits)`);
      } finally {
        await server.stop();
      }
    }
    console.log(`${job.name.padEnd(20)} ${row.join('   ')}   busy/idle ${(iops[0] / iops[1]).toFixed(2)}x`);
  }
}

/**
 * Sustained random writes, then kill -9 and restart: how many regions recovery
 * resyncs, against how many the workload wrote. A uniform workload over the
 * whole device dirties every region each sweep period; a hot spot shows the
 * bound (regions written in the last two sweep periods).
 */
async function resyncAfterCrash(options: { dir: string; sizeBytes: number; seconds: number }): Promise<void> {
  console.log('\nresync after kill -9 under sustained 4k random writes (sweeper every 3 s, 1 MiB regions)');
  for (const [label, spanBytes] of [['whole device', options.sizeBytes], ['hot 64 MiB', 64 << 20]] as const) {
    const name = `crash-${spanBytes}`;
    const args = mirrorArgs(options.dir, name, options.sizeBytes, 3000);
    let server = await startServerProcess(args);
    const fio = run('fio', ['--name=crash', '--ioengine=nbd', `--uri=${server.uri()}`, '--rw=randwrite', '--bs=4k', '--iodepth=16',
      `--size=${spanBytes}`, '--time_based', `--runtime=${Math.max(options.seconds, 8)}`, '--norandommap', '--randrepeat=0'],
    { timeoutMs: 120_000 });
    await new Promise((resolve) => setTimeout(resolve, Math.max(options.seconds, 8) * 1000 - 1000));
    await server.kill();
    await fio;
    server = await startServerProcess(args);
    try {
      const recovered = server.logs.find((entry) => entry.msg === 'listening')?.recoveryRegions as number;
      const done = await adminRequest(path.join(options.dir, `${name}.sock`), { command: 'wait-resync' }) as
        { resync: { bytesCopied: number; bytesZeroed: number; startedAtMs: number; finishedAtMs: number }; regionCount: number };
      const spanRegions = Math.ceil(spanBytes / (1 << 20));
      console.log(`${label.padEnd(14)} resynced ${recovered} of ${done.regionCount} regions (the workload wrote ${spanRegions}), ` +
        `${(done.resync.bytesCopied / 2 ** 20).toFixed(0)} MiB copied in ${done.resync.finishedAtMs - done.resync.startedAtMs} ms`);
    } finally {
      await server.stop();
    }
  }
}
