/**
 * Two builds of nbd-mirror side by side: `BENCH_BASELINE=/path/to/other/checkout npm run bench:compare`
 * starts this checkout's server and the baseline's (built there with `npm run build`) on identical files,
 * in the same configurations, and runs each fio job on both in interleaved, rotated rounds. The ratio
 * this/baseline, taken round by round (paired-ratio.ts), is what a change did to the request path;
 * absolute figures drift on a shared machine.
 * BENCH_CONFIG=--cache or --no-cache keeps one configuration; BENCH_JOBS=name,... some jobs.
 * BENCH_PREFILL=1 writes the whole device first (1 MiB sequential), so writes overwrite allocated blocks and
 * reads find data, as on a disk in use (a sparse device makes random writes allocate and reads find holes).
 * Each build runs with the node flags its own bin/nbd-mirror.js starts node with, as its users run it (this
 * checkout's are serverNodeFlags, which its bin carries: test/operations/node-flags.test.ts).
 */
import fs from 'node:fs';
import path from 'node:path';
import { serverNodeFlags } from '../sys/node-flags.js';
import { cliPath, startServerProcess } from '../test/helpers/server-process.js';
import { makeTempDir } from '../test/helpers/tools.js';
import { standardJobs } from './fio.js';
import { largeIoJobs } from './large-io.js';
import { fill } from './mirror.js';
import { type BenchServer, measureJob, printJob } from './side-by-side.js';

const baselineRoot = process.env.BENCH_BASELINE;
const seconds = Number(process.env.BENCH_SECONDS ?? 5);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const sizeBytes = Number(process.env.BENCH_SIZE_BYTES ?? 512 * 1024 ** 2);
const prefill = process.env.BENCH_PREFILL === '1';
// The request-path jobs a change is most likely to move; BENCH_JOBS picks others from the standard and large-I/O sets.
const picked = process.env.BENCH_JOBS?.split(',') ?? ['4k-randread-qd32', '4k-randwrite-qd32', '4k-randwrite-qd1', '1m-seqwrite-qd8', '1m-seqread-qd8'];
const known = new Map([...standardJobs, ...largeIoJobs].map((job) => [job.name, job]));
const jobs = picked.flatMap((name) => known.get(name) ?? []);

/** The node flags another build's bin starts the server with: its shebang's `--` words (none before sys/node-flags.ts). */
function launcherFlags(root: string): string[] {
  const shebang = fs.readFileSync(path.join(root, 'bin', 'nbd-mirror.js'), 'utf8').split('\n')[0]!;
  return shebang.split(/\s+/).filter((word) => word.startsWith('--'));
}

async function main(): Promise<void> {
  if (!baselineRoot) throw new Error('BENCH_BASELINE must name another checkout of nbd-mirror, built (npm run build)');
  const unknown = picked.filter((name) => !known.has(name));
  if (unknown.length > 0) throw new Error(`BENCH_JOBS: no job named ${unknown.join(', ')}; the jobs are ${[...known.keys()].join(', ')}`);
  const baselineCli = path.join(path.resolve(baselineRoot), 'dist', 'cli', 'main.js');
  if (!fs.existsSync(baselineCli)) throw new Error(`${baselineCli} does not exist: run npm run build in ${baselineRoot}`);
  const dir = makeTempDir('bench-compare');
  const launchers: Record<'this' | 'baseline', string[]> = {
    this: [process.execPath, ...serverNodeFlags, cliPath],
    baseline: [process.execPath, ...launcherFlags(path.resolve(baselineRoot)), baselineCli],
  };
  console.log(`node flags: this ${launchers.this.slice(1, -1).join(' ') || '(none)'}; baseline ${launchers.baseline.slice(1, -1).join(' ') || '(none)'}`);
  console.log(`compare: this checkout vs ${baselineRoot}; ${sizeBytes} bytes${prefill ? ' prefilled' : ''}, ${seconds}s per job, ${rounds} rotated rounds ` +
    '(best of each shown; ratio: median of the rounds\' own, with their range)');
  const configurations: Array<[string, string[]]> = [['mirror + cache (default)', ['--cache']], ['mirror, --no-cache', ['--no-cache']]];
  const only = process.env.BENCH_CONFIG;
  try {
    for (const [label, extra] of configurations.filter(([, args]) => only === undefined || args.includes(only))) {
      const sides = await Promise.all((['this', 'baseline'] as const).map(async (name) => {
        const legs = [0, 1].map((slot) => path.join(dir, `${name}-${extra[0]}-leg${slot}.img`));
        const log = path.join(dir, `${name}-${extra[0]}.log`);
        const server = await startServerProcess(['--leg', ...legs, '--log', log, '--size', String(sizeBytes), '--no-unix', '--no-admin', ...extra],
          { launcher: launchers[name] });
        const side: BenchServer<'this' | 'baseline'> = { name, uri: server.uri(), pid: server.pid, files: legs,
          stop: async () => { await server.stop(); } };
        if (prefill) await fill(side.uri, sizeBytes);
        return side;
      }));
      console.log(`\n${label}`);
      try {
        for (const job of jobs) {
          const results = await measureJob(sides, job, { seconds, rounds, sizeBytes });
          printJob(job, sides, results, [['this', 'baseline']]);
          // CPU per request is the steadier figure on these machines (every server gets about one core).
          console.log(`  cpu/req this/baseline: ${(results.best('this').cpuPerRequestUs / results.best('baseline').cpuPerRequestUs).toFixed(2)}x`);
        }
      } finally {
        await Promise.all(sides.map((side) => side.stop()));
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

await main();
