/**
 * The large-I/O table of npm run bench: our default configuration (mirror,
 * log, cache), the same mirror without the cache, one plain leg, nbdkit's
 * file plugin, nbdkit's cache filter over it (the cache's peer) and a
 * two-leg mirror written in C as an nbdkit plugin (bench/c-mirror), job by
 * job, rounds interleaved and rotated. For each: the figure, the server's
 * CPU per request, the p99 latency, and at the end the peak memory.
 */
import fs from 'node:fs';
import path from 'node:path';
import { projectRoot, startServerProcess } from '../test/helpers/server-process.js';
import { freePort, run } from '../test/helpers/tools.js';
import type { FioJob } from './fio.js';
import { fill, mirrorArgs, mirrorLegs } from './mirror.js';
import type { RoundResults } from './paired-ratio.js';
import { type BenchServer, type Measured, measureJob, printJob, printPeakMemory, startPeer } from './side-by-side.js';

export const largeIoJobs: FioJob[] = [
  { name: '1m-seqwrite-qd8', rw: 'write', blockSize: '1m', iodepth: 8 },
  { name: '64k-randrw70-qd16', rw: 'randrw', readPercent: 70, blockSize: '64k', iodepth: 16 },
  { name: '1m-seqread-qd8', rw: 'read', blockSize: '1m', iodepth: 8 },
  { name: '4k-randwrite-qd32', rw: 'randwrite', blockSize: '4k', iodepth: 32 },
  { name: '4k-randread-qd32', rw: 'randread', blockSize: '4k', iodepth: 32 },
  // A database's commit: each 4 KiB write followed by a flush, one at a time. Its figure is write IOPS (a pair each).
  { name: '4k-write-flush-qd1', rw: 'randwrite', blockSize: '4k', iodepth: 1, fsyncEvery: 1 },
];

type ServerName = 'cache' | 'no-cache' | 'plain' | 'plain-cache' | 'nbdkit' | 'nbdkit-cache' | 'c-mirror';

type Server = BenchServer<ServerName>;

/** The ratios the goals are stated in: [numerator, denominator]. */
const ratios: Array<[ServerName, ServerName]> = [
  ['cache', 'c-mirror'], ['cache', 'no-cache'], ['cache', 'nbdkit'], ['no-cache', 'c-mirror'], ['plain', 'nbdkit'],
  ['plain-cache', 'nbdkit'], ['nbdkit-cache', 'nbdkit'],
];

async function startNbdkit(name: ServerName, args: string[], files: string[]): Promise<Server> {
  const port = await freePort();
  return startPeer(name, 'nbdkit', ['-f', '-i', '127.0.0.1', '-p', String(port), ...args], `nbd://127.0.0.1:${port}`, files);
}

/** Builds the C reference plugin; undefined (with the reason printed) when it cannot be built here. */
async function buildCMirror(dir: string): Promise<string | undefined> {
  const output = path.join(dir, 'cmirror.so');
  const built = await run('cc', ['-O2', '-shared', '-fPIC', '-o', output, path.join(projectRoot, 'bench', 'c-mirror', 'cmirror.c')],
    { timeoutMs: 120_000 });
  if (built.code === 0) return output;
  console.log(`c-mirror: not built (needs cc and nbdkit-plugin-dev): ${built.stderr.trim().split('\n')[0]}`);
  return undefined;
}

async function startServers(dir: string, sizeBytes: number): Promise<Server[]> {
  const servers: Server[] = [];
  const ours = async (name: ServerName, args: string[], files: string[]): Promise<void> => {
    const process = await startServerProcess(args);
    servers.push({ name, uri: process.uri(), pid: process.pid, files, stop: async () => { await process.stop(); } });
  };
  const blank = (name: string): string => {
    const file = path.join(dir, name);
    fs.writeFileSync(file, '');
    fs.truncateSync(file, sizeBytes);
    return file;
  };
  await ours('cache', mirrorArgs(dir, 'large-cache', sizeBytes, 3000, true), mirrorLegs(dir, 'large-cache'));
  await ours('no-cache', mirrorArgs(dir, 'large-mirror', sizeBytes, 3000), mirrorLegs(dir, 'large-mirror'));
  const plain = blank('large-plain.img');
  await ours('plain', ['--leg', plain, '--no-unix', '--no-cache'], [plain]);
  // The default cache over one leg: the like-for-like peer of nbdkit file for the cache's own cost.
  const plainCached = blank('large-plain-cache.img');
  await ours('plain-cache', ['--leg', plainCached, '--no-unix', '--cache'], [plainCached]);
  const nbdkitFile = blank('large-nbdkit.img');
  servers.push(await startNbdkit('nbdkit', ['file', nbdkitFile], [nbdkitFile]));
  const nbdkitCached = blank('large-nbdkit-cache.img');
  servers.push(await startNbdkit('nbdkit-cache', ['--filter=cache', 'file', nbdkitCached, 'cache=writeback'], [nbdkitCached]));
  const plugin = await buildCMirror(dir);
  if (plugin !== undefined) {
    const legs = [blank('large-c-0.img'), blank('large-c-1.img')];
    servers.push(await startNbdkit('c-mirror', [plugin, `leg0=${legs[0]}`, `leg1=${legs[1]}`], legs));
  }
  return servers;
}

/** One line of CPU per request as a multiple of `peer`'s, for the servers that ran beside it. */
function printCpuAgainst(results: RoundResults<ServerName, Measured>, peer: ServerName, label: string, names: ServerName[]): void {
  const ran = names.filter((name) => results.ran(name));
  if (!results.ran(peer) || ran.length === 0) return;
  const peerCpu = results.best(peer).cpuPerRequestUs;
  console.log(`  cpu/req against ${label}: ` +
    ran.map((name) => `${name} ${(results.best(name).cpuPerRequestUs / peerCpu).toFixed(2)}x`).join('   '));
}

export async function benchLargeIo(options: { dir: string; sizeBytes: number; seconds: number; rounds: number; jobs?: string[] }): Promise<void> {
  const { dir, sizeBytes, seconds, rounds } = options;
  console.log('\nlarge I/O: default config (mirror + cache) | mirror --no-cache | one plain leg --no-cache | one leg with the cache | nbdkit file | ' +
    'nbdkit --filter=cache cache=writeback | C two-leg mirror (nbdkit plugin)');
  console.log('  cpu/req: the server\'s CPU (all threads) over the run, per request (the 1 s ramp counted at the measured rate)');
  const servers = await startServers(dir, sizeBytes);
  try {
    for (const server of servers) await fill(server.uri, sizeBytes);
    for (const job of largeIoJobs.filter((candidate) => options.jobs?.includes(candidate.name) ?? true)) {
      const results = await measureJob(servers, job, { seconds, rounds, sizeBytes });
      printJob(job, servers, results, ratios);
      printCpuAgainst(results, 'nbdkit', 'nbdkit file', ['cache', 'plain']);
      // The mirror writes every byte to two legs: its like-for-like CPU peer is the C mirror, not one file.
      printCpuAgainst(results, 'c-mirror', 'the C mirror (two legs each)', ['cache', 'no-cache']);
    }
    printPeakMemory(servers);
  } finally {
    for (const server of servers) await server.stop().catch(() => undefined);
  }
}
