/**
 * What the bench tables share: peer servers started as child processes on
 * loopback (ended by their PID), and the loop that runs each job on every
 * server in rotated, interleaved rounds, keeping each server's best run with
 * its CPU per request, and each round's figure for ratios taken round by
 * round (paired-ratio.ts).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import { peakRssBytes } from '../test/helpers/server-process.js';
import { run } from '../test/helpers/tools.js';
import { figure, type FioJob, type FioResult, roundOrder, runFio } from './fio.js';
import { formatRatio, RoundResults } from './paired-ratio.js';

export interface BenchServer<Name extends string = string> {
  name: Name;
  /** What fio's nbd engine connects to (nbds:// with its TLS parameters for TLS servers). */
  uri: string;
  pid: number;
  /** Backing files, put in the same page-cache state before every run. */
  files: string[];
  /** The client's environment (HOME for libnbd's default TLS credentials folder). */
  clientEnv?: NodeJS.ProcessEnv;
  stop(): Promise<void>;
}

/** One run of a job on one server: fio's result and the server's CPU per request. */
export interface Measured {
  iops: number;
  result: FioResult;
  cpuPerRequestUs: number;
}

const rampSeconds = 1;

/** An empty (sparse) file of `sizeBytes` for a server to export. */
export function blankFile(file: string, sizeBytes: number): string {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, sizeBytes);
  return file;
}

/** User and system CPU of a whole process (every thread), in seconds. */
export function cpuSeconds(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  // utime and stime are fields 14 and 15 of stat(5), counted after "pid (comm) ".
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Starts a peer (nbdkit, qemu-nbd) and waits until nbdinfo can read `uri`'s size. */
export async function startPeer<Name extends string>(name: Name, command: string, args: string[], uri: string, files: string[],
  clientEnv?: NodeJS.ProcessEnv): Promise<BenchServer<Name>> {
  const child: ChildProcess = spawn(command, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  for (let attempt = 0; attempt < 100; attempt += 1) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    if ((await run('nbdinfo', ['--size', uri], { timeoutMs: 5000, env: clientEnv })).code === 0) {
      return {
        name, uri, pid: child.pid!, files, clientEnv,
        stop: async () => {
          if (child.exitCode !== null || child.signalCode !== null) return;
          const exited = new Promise((resolve) => child.once('exit', resolve));
          child.kill('SIGTERM');
          await exited;
        },
      };
    }
  }
  child.kill('SIGKILL');
  throw new Error(`${command} ${args.join(' ')} did not start`);
}

/** Runs `job` on every server, `rounds` times in rotated order. */
export async function measureJob<Name extends string>(servers: Array<BenchServer<Name>>, job: FioJob,
  options: { seconds: number; rounds: number; sizeBytes: number }): Promise<RoundResults<Name, Measured>> {
  const results = new RoundResults<Name, Measured>();
  for (let round = 0; round < options.rounds; round += 1) {
    for (const server of roundOrder(servers, round)) {
      const cpuBefore = cpuSeconds(server.pid);
      const result = await runFio(server.uri, job, options.seconds, options.sizeBytes, server.files, server.clientEnv);
      const requests = result.ios * (options.seconds + rampSeconds) / options.seconds;
      const cpuPerRequestUs = (cpuSeconds(server.pid) - cpuBefore) * 1e6 / Math.max(1, requests);
      results.add(server.name, { iops: result.iops, result, cpuPerRequestUs });
    }
  }
  return results;
}

/**
 * One job's rows (each server's best run: figure, CPU per request, p99) and
 * the ratios named, where both sides ran: the median of the rounds' own
 * ratios, with their range (paired-ratio.ts).
 */
export function printJob<Name extends string>(job: FioJob, servers: Array<BenchServer<Name>>, results: RoundResults<Name, Measured>,
  ratios: Array<[Name, Name]>): void {
  console.log(`\n${job.name}`);
  for (const server of servers) {
    const { result, cpuPerRequestUs } = results.best(server.name);
    console.log(`  ${server.name.padEnd(13)} ${figure(job, result).padStart(12)}   cpu/req ${cpuPerRequestUs.toFixed(cpuPerRequestUs < 100 ? 1 : 0).padStart(6)} us   ` +
      `p99 ${(result.latencyP99Us / 1000).toFixed(2).padStart(7)} ms`);
  }
  const shown = ratios.filter(([a, b]) => results.ran(a) && results.ran(b)).map(([a, b]) => `${a}/${b} ${formatRatio(results.ratio(a, b))}`);
  console.log(`  ratios: ${shown.join('   ')}`);
}

export function printPeakMemory(servers: BenchServer[]): void {
  console.log('\npeak memory (VmHWM over the whole table):');
  console.log('  ' + servers.map((server) => {
    const peak = peakRssBytes(server.pid);
    return `${server.name} ${peak === undefined ? '?' : (peak / 2 ** 20).toFixed(0)} MiB`;
  }).join('   '));
}
