import { run } from '../test/helpers/tools.js';
import { settleFiles } from './file-cache.js';

export interface FioJob {
  name: string;
  rw: 'randread' | 'randwrite' | 'read' | 'write' | 'randrw';
  /** Share of reads in a randrw job, percent. */
  readPercent?: number;
  blockSize: string;
  iodepth: number;
  /** Add an fsync (NBD flush) after every N writes. */
  fsyncEvery?: number;
}

/** The jobs `npm run bench` measures against nbdkit; other benches pick from them by name. */
export const standardJobs: FioJob[] = [
  { name: '4k-randread-qd1', rw: 'randread', blockSize: '4k', iodepth: 1 },
  { name: '4k-randread-qd32', rw: 'randread', blockSize: '4k', iodepth: 32 },
  { name: '4k-randwrite-qd1', rw: 'randwrite', blockSize: '4k', iodepth: 1 },
  { name: '4k-randwrite-qd32', rw: 'randwrite', blockSize: '4k', iodepth: 32 },
  { name: '1m-seqread-qd8', rw: 'read', blockSize: '1m', iodepth: 8 },
  { name: '1m-seqwrite-qd8', rw: 'write', blockSize: '1m', iodepth: 8 },
];

/** IOPS for small blocks, MB/s for large ones. */
export function figure(job: FioJob, result: FioResult): string {
  return job.blockSize === '4k' || job.blockSize === '64k' ? `${Math.round(result.iops)} IOPS` : `${(result.bytesPerSecond / 1e6).toFixed(0)} MB/s`;
}

export interface FioResult {
  /** Reads and writes together for a mixed job. */
  iops: number;
  bytesPerSecond: number;
  latencyMeanUs: number;
  /** Completion latency, 99th percentile (the slower side of a mixed job). */
  latencyP99Us: number;
  /** Requests completed in the measured time (without the ramp). */
  ios: number;
}

/**
 * The servers in the order round `round` runs them: rotated one place per
 * round, so no server always runs first or last. The slot a run gets can
 * move a job's figure (1 MiB writes: see the commit that added this), and
 * with a fixed order that would bias every ratio the same way.
 */
export function roundOrder<T>(servers: readonly T[], round: number): T[] {
  const shift = round % servers.length;
  return [...servers.slice(shift), ...servers.slice(0, shift)];
}

/**
 * Runs one time-based fio job with the nbd engine against `uri`. `files` are
 * the server's backing files: they are put in the same page-cache state
 * before every run (see file-cache.ts). `env` is fio's (HOME names libnbd's
 * TLS credentials: fio's engine refuses URIs that name local files).
 */
export async function runFio(uri: string, job: FioJob, seconds: number, sizeBytes: number, files: string[],
  env?: NodeJS.ProcessEnv): Promise<FioResult> {
  await settleFiles(files, job.rw.includes('read'));
  const args = [
    '--name', job.name, '--ioengine=nbd', `--uri=${uri}`, `--rw=${job.rw}`, `--bs=${job.blockSize}`,
    `--iodepth=${job.iodepth}`, `--size=${sizeBytes}`, '--time_based', `--runtime=${seconds}`,
    '--ramp_time=1', '--randrepeat=0', '--norandommap', '--output-format=json',
  ];
  if (job.fsyncEvery !== undefined) args.push(`--fsync=${job.fsyncEvery}`);
  if (job.readPercent !== undefined) args.push(`--rwmixread=${job.readPercent}`);
  // A write job flushes when it ends, so its dirty pages are written back on
  // its own time, not during the next server's run (which they slowed by up to 2x).
  if (job.rw.includes('write')) args.push('--end_fsync=1');
  const result = await run('fio', args, { timeoutMs: (seconds + 60) * 1000, env });
  if (result.code !== 0) throw new Error(`fio ${job.name} failed: ${result.stderr}`);
  const parsed = JSON.parse(result.stdout.slice(result.stdout.indexOf('{'))) as {
    jobs: Array<{ read: FioSide; write: FioSide }>;
  };
  const { read, write } = parsed.jobs[0];
  const sides = job.rw === 'randrw' ? [read, write] : job.rw.includes('read') ? [read] : [write];
  const ios = sides.reduce((sum, side) => sum + side.total_ios, 0);
  return {
    iops: sides.reduce((sum, side) => sum + side.iops, 0),
    bytesPerSecond: sides.reduce((sum, side) => sum + side.bw_bytes, 0),
    latencyMeanUs: sides.reduce((sum, side) => sum + side.lat_ns.mean * side.total_ios, 0) / Math.max(1, ios) / 1000,
    latencyP99Us: Math.max(...sides.map((side) => (side.clat_ns.percentile?.['99.000000'] ?? 0) / 1000)),
    ios,
  };
}

interface FioSide {
  iops: number;
  bw_bytes: number;
  total_ios: number;
  lat_ns: { mean: number };
  clat_ns: { percentile?: Record<string, number> };
}
