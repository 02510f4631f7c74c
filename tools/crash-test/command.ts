import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { parseSize } from '../../config/schema.js';
import { type CrashTestReport, formatBytes, newWorkloadState, runCrashTest } from './harness.js';
import { isLinkFault, type CrashKind, crashKinds, type CrashTestSettings, type FaultKind, faultKinds, type WorkloadKind, workloadKinds, pointText } from './plan.js';
import { replayWriteLogs } from './replay.js';
import { runExhaustive } from './exhaustive.js';

function listOf<T extends string>(value: string, allowed: readonly T[], flag: string): T[] {
  const items = value.split(',').map((item) => item.trim()).filter((item) => item !== '');
  for (const item of items) if (!allowed.includes(item as T)) throw new Error(`${flag}: "${item}" is not one of ${allowed.join(', ')}`);
  if (items.length === 0) throw new Error(`${flag}: needs at least one of ${allowed.join(', ')}`);
  return items as T[];
}

function durationMs(value: string, flag: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(value.trim());
  if (!match) throw new Error(`${flag}: "${value}" is not a duration such as 90s, 10m or 1h`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2] ?? 's']!;
  return Math.round(Number(match[1]) * unit);
}

export function registerCrashTest(program: Command): void {
  program.command('crash-test')
    .description('start the server, drive a workload through a real client, crash it (kill -9, a crash point, a power cut), ' +
      'restart, recover, and check the invariants; see docs/crash-testing.md')
    .option('--seed <n>', 'seed of the whole run (printed; the same seed and options replay the same run)')
    .option('--iterations <n>', 'crashes to run', '20')
    .option('--time-limit <duration>', 'stop starting iterations after this long, e.g. 10m', '1h')
    .option('--workloads <list>', `comma-separated: ${workloadKinds.join(', ')}`, 'raw')
    .option('--crashes <list>', `comma-separated: ${crashKinds.join(', ')}`, crashKinds.join(','))
    .option('--faults <list>', `comma-separated: ${faultKinds.join(', ')}`, 'none')
    .option('--cache <mode>', 'on, off or mixed (each iteration draws)', 'mixed')
    .option('--size <size>', 'size of the mirror under test', '64MiB')
    .option('--region-size <size>', 'region size', '256KiB')
    .option('--workload-ms <n>', 'longest time a workload runs before its crash', '1200')
    .option('--first-iteration <n>', 'start at this iteration number (reruns a reported iteration on a fresh mirror)', '0')
    .option('--dir <dir>', 'work folder (default: a new temporary folder, removed after a passing run)')
    .option('--keep', 'keep the work folder even when everything passed')
    .option('--remote-leg', 'leg1 is a remote leg: a plain export served by another nbd-mirror process, reached through a fault proxy ' +
      '(link faults: link-cut, link-stall, remote-restart)')
    .option('--replay', 'record every leg in a write log, then rebuild each leg at every flush and FUA mark and check it')
    .option('--exhaustive', 'run every sequence of up to three operations over two regions, crashed after each step, in-process')
    .option('--json <file>', 'write the report as JSON too')
    .action(async (options: Record<string, string | boolean | undefined>) => {
      const seed = options.seed === undefined ? crypto.randomInt(0, 2 ** 31) : Number(options.seed);
      if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`--seed: "${String(options.seed)}" is not a non-negative integer`);
      const say = (line: string): void => { process.stdout.write(`${line}\n`); };
      if (options.exhaustive) {
        const outcome = await runExhaustive({ seed, say });
        process.exitCode = outcome.failures.length > 0 ? 1 : 0;
        return;
      }
      const workDir = typeof options.dir === 'string' ? path.resolve(options.dir)
        : fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-mirror-crash-test-'));
      if (fs.existsSync(path.join(workDir, 'mirror.log')) && options.dir !== undefined) {
        throw new Error(`${workDir} already holds a mirror; give an empty or new --dir`);
      }
      const settings: CrashTestSettings = {
        workDir,
        seed,
        iterations: Number(options.iterations),
        firstIteration: Number(options.firstIteration),
        timeLimitMs: durationMs(String(options.timeLimit), '--time-limit'),
        workloads: listOf<WorkloadKind>(String(options.workloads), workloadKinds, '--workloads'),
        crashes: listOf<CrashKind>(String(options.crashes), crashKinds, '--crashes'),
        faults: listOf<FaultKind>(String(options.faults), faultKinds, '--faults'),
        cache: ((): 'on' | 'off' | 'mixed' => {
          if (options.cache === 'on' || options.cache === 'off' || options.cache === 'mixed') return options.cache;
          throw new Error('--cache: must be on, off or mixed');
        })(),
        sizeBytes: parseSize(String(options.size), '--size'),
        regionSizeBytes: parseSize(String(options.regionSize), '--region-size'),
        workloadMs: Number(options.workloadMs),
        writeLogs: options.replay === true,
        remoteLeg: options.remoteLeg === true,
      };
      if (!settings.remoteLeg && settings.faults.some(isLinkFault)) {
        throw new Error('--faults: link-cut, link-stall and remote-restart act on a remote leg; add --remote-leg');
      }
      if (settings.sizeBytes % (4 * 1024 * 1024) !== 0) throw new Error('--size: must be a multiple of 4MiB (the device is split in quarters)');
      if (settings.writeLogs && settings.faults.includes('leg-eio')) {
        throw new Error('--replay checks every leg at every mark, so it cannot run with leg-eio (a failed leg misses marks by design)');
      }
      const state = newWorkloadState();
      const report = await runCrashTest(settings, say, state);
      printTable(report, say);
      let failed = report.failures > 0;
      if (options.replay) {
        const replay = await replayWriteLogs(settings, say, state.rawPhases);
        failed ||= replay.failures > 0;
      }
      if (typeof options.json === 'string') fs.writeFileSync(options.json, `${JSON.stringify(report, null, 2)}\n`);
      if (!failed && !options.keep && options.dir === undefined) fs.rmSync(workDir, { recursive: true, force: true });
      else say(`work folder kept: ${workDir}`);
      process.exitCode = failed ? 1 : 0;
    });
}

export function printTable(report: CrashTestReport, say: (line: string) => void): void {
  say('');
  say(`seed ${report.seed}: ${report.crashes} crashes, ${report.recoveries} recoveries, ${report.failures} failing, ` +
    `${Math.round(report.elapsedMs / 1000)} s`);
  say('iter  workload  crash                                      fault          cache  resync              1     2     3     4     5     6');
  for (const result of report.results) {
    const { plan } = result;
    const crash = plan.crash === 'point' ? pointText(plan) : plan.crash;
    const mark = (verdict: string): string => (verdict.startsWith('fail') ? 'FAIL' : verdict);
    say(`${String(plan.index).padEnd(5)} ${plan.workload.padEnd(9)} ${crash.padEnd(42)} ${plan.fault.padEnd(14)} ` +
      `${(plan.cache ? 'on' : 'off').padEnd(6)} ${`${result.recoveryRegions} rg ${formatBytes(result.resyncBytes)}`.padEnd(19)} ` +
      `${([1, 2, 3, 4, 5, 6] as const).map((key) => mark(result.invariants[key]).padEnd(5)).join(' ')}`);
  }
  const byKind = new Map<string, { runs: number; failures: number }>();
  for (const result of report.results) {
    const key = `${result.plan.workload}/${result.plan.crash}`;
    const entry = byKind.get(key) ?? { runs: 0, failures: 0 };
    entry.runs += 1;
    if (Object.values(result.invariants).some((verdict) => verdict.startsWith('fail'))) entry.failures += 1;
    byKind.set(key, entry);
  }
  say(`by workload/crash: ${[...byKind].map(([key, entry]) => `${key} ${entry.runs - entry.failures}/${entry.runs} pass`).join(', ')}`);
  const points = report.results.filter((result) => result.plan.crash === 'point');
  if (points.length > 0) {
    // A point the run never reached ends in kill -9 instead: say how many really struck where planned.
    const struck = points.filter((result) => result.pointStruck);
    say(`crash points: ${struck.length} of ${points.length} struck where planned, the rest were not reached and became kill -9`);
  }
}
