/**
 * Two builds of nbd-mirror side by side: `BENCH_BASELINE=/path/to/other/checkout npm run bench:compare`
 * starts this checkout's server and the baseline's (built there with `npm run build`) on identical files,
 * in the same configurations, and runs each fio job on both in interleaved, rotated rounds. The ratio
 * this/baseline is what a change did to the request path; absolute figures drift on a shared machine.
 * BENCH_CONFIG=--cache or --no-cache keeps one configuration; BENCH_JOBS=name,... some jobs.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { cliPath } from '../test/helpers/server-process.js';
import { makeTempDir } from '../test/helpers/tools.js';
import { type FioJob, type FioResult, roundOrder, runFio } from './fio.js';

const baselineRoot = process.env.BENCH_BASELINE;
const seconds = Number(process.env.BENCH_SECONDS ?? 5);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const sizeBytes = Number(process.env.BENCH_SIZE_BYTES ?? 512 * 1024 ** 2);

const picked = process.env.BENCH_JOBS?.split(',');
const allJobs: FioJob[] = [
  { name: '4k-randread-qd32', rw: 'randread', blockSize: '4k', iodepth: 32 },
  { name: '4k-randwrite-qd32', rw: 'randwrite', blockSize: '4k', iodepth: 32 },
  { name: '4k-randwrite-qd1', rw: 'randwrite', blockSize: '4k', iodepth: 1 },
  { name: '1m-seqwrite-qd8', rw: 'write', blockSize: '1m', iodepth: 8 },
  { name: '1m-seqread-qd8', rw: 'read', blockSize: '1m', iodepth: 8 },
];
const jobs = allJobs.filter((job) => picked?.includes(job.name) ?? true);

interface Running { uri: string; stop: () => Promise<void>; legs: string[] }

/** Starts `node CLI serve ...` and waits for its "listening" line. */
async function serve(cli: string, args: string[]): Promise<Running & { pid: number }> {
  const child = spawn(process.execPath, [cli, 'serve', '--listen', '127.0.0.1:0', '--no-unix', '--no-admin', ...args],
    { env: { ...process.env, NBD_MIRROR_LOG_JSON: '1' }, stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cli} did not start`)), 60_000);
    readline.createInterface({ input: child.stdout! }).on('line', (line) => {
      if (!line.startsWith('{')) return;
      const entry = JSON.parse(line) as { msg?: string; tcp?: { port: number } };
      if (entry.msg === 'listening') {
        clearTimeout(timer);
        resolve(entry.tcp!.port);
      }
    });
  });
  return {
    pid: child.pid!, uri: `nbd://127.0.0.1:${port}/`, legs: [],
    stop: () => new Promise((resolve) => { child.once('exit', () => resolve()); child.kill('SIGTERM'); }),
  };
}

async function main(): Promise<void> {
  if (!baselineRoot) throw new Error('BENCH_BASELINE must name another checkout of nbd-mirror, built (npm run build)');
  const baselineCli = path.join(path.resolve(baselineRoot), 'dist', 'cli', 'main.js');
  if (!fs.existsSync(baselineCli)) throw new Error(`${baselineCli} does not exist: run npm run build in ${baselineRoot}`);
  const dir = makeTempDir('bench-compare');
  console.log(`compare: this checkout vs ${baselineRoot}; ${sizeBytes} bytes, ${seconds}s per job, ${rounds} rotated rounds (best of each kept)`);
  const configurations: Array<[string, string[]]> = [['mirror + cache (default)', ['--cache']], ['mirror, --no-cache', ['--no-cache']]];
  const only = process.env.BENCH_CONFIG;
  try {
    for (const [label, extra] of configurations.filter(([, args]) => only === undefined || args.includes(only))) {
      const sides = await Promise.all([['this', cliPath], ['baseline', baselineCli]].map(async ([name, cli]) => {
        const legs = [0, 1].map((slot) => path.join(dir, `${name}-${extra[0]}-leg${slot}.img`));
        const log = path.join(dir, `${name}-${extra[0]}.log`);
        const server = await serve(cli, ['--leg', ...legs, '--log', log, '--size', String(sizeBytes), ...extra]);
        return { name, server, legs };
      }));
      console.log(`\n${label}`);
      try {
        for (const job of jobs) {
          const best: Record<string, FioResult | undefined> = {};
          for (let round = 0; round < rounds; round += 1) {
            for (const side of roundOrder(sides, round)) {
              const result = await runFio(side.server.uri, job, seconds, sizeBytes, side.legs);
              if (!best[side.name] || result.iops > best[side.name]!.iops) best[side.name] = result;
            }
          }
          const figure = (result: FioResult): string => (job.blockSize === '4k' ? `${Math.round(result.iops)} IOPS`
            : `${(result.bytesPerSecond / 1e6).toFixed(0)} MB/s`);
          console.log(`${job.name.padEnd(20)} this ${figure(best.this!).padStart(12)}   baseline ${figure(best.baseline!).padStart(12)}   ` +
            `ratio ${(best.this!.iops / best.baseline!.iops).toFixed(2)}x`);
        }
      } finally {
        await Promise.all(sides.map((side) => side.server.stop()));
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

await main();
