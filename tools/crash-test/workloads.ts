import { type ChildProcess, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { attachThroughFuse, type LoopAttachment } from './fuse-loop.js';
import { type IterationResult, type Say, sleep, workloadScript } from './harness.js';
import { DurabilityOracle, readJournal, type Phase } from './oracle.js';
import type { CrashTestSettings, IterationPlan, Paths } from './plan.js';
import { run, runOk, type RunResult } from './process-tools.js';
import type { CheckpointExpectation } from './checkpoint-oracle.js';
import type { ServerProcess } from './server-process.js';

/** What carries over from one iteration to the next: the device keeps its data, so the checks keep their expectations. */
export interface WorkloadState {
  nextOpId: number;
  oracles: Map<string, DurabilityOracle>;
  /** Files fsynced into ext4 so far, by name, with their sha256. */
  ext4Files: Map<string, string>;
  fioAreaWritten: boolean;
  /** Every raw phase's journal, kept for --replay (only when write logs are on). */
  rawPhases: Phase[];
  ext4Made?: boolean;
  fioSeed?: number;
  /** Checkpoints the harness made, with the content they must report changes against (invariant 6). */
  checkpoints: CheckpointExpectation[];
}

export interface WorkloadContext {
  settings: CrashTestSettings;
  plan: IterationPlan;
  paths: Paths;
  state: WorkloadState;
  say: Say;
  result: IterationResult;
}

export interface RunningWorkload {
  /** Waits for the client side to notice the crash and finish. */
  afterCrash(): Promise<void>;
  /** Runs right after restart, while recovery resyncs. */
  duringRecovery(server: ServerProcess): Promise<void>;
  /** Runs after recovery finished and the legs were compared. */
  verify(server: ServerProcess): Promise<void>;
}

/**
 * The device is split so every workload keeps its own data across
 * iterations, and every iteration re-checks the raw area whatever ran:
 * raw [0, 1/4), fio [1/4, 1/2), ext4 [1/2, 1).
 */
export function areas(sizeBytes: number): { raw: [number, number]; fio: [number, number]; ext4: [number, number] } {
  const quarter = sizeBytes / 4;
  return { raw: [0, quarter], fio: [quarter, quarter], ext4: [2 * quarter, 2 * quarter] };
}

const python = '/usr/bin/python3';

export async function runWorkload(context: WorkloadContext, server: ServerProcess): Promise<RunningWorkload> {
  const { plan } = context;
  const oracle = rawOracle(context);
  const phases: Phase[] = [];
  let crashPhase: Promise<void> = Promise.resolve();
  let ext4: Ext4Run | undefined;
  if (plan.workload === 'raw') crashPhase = rawPhase(context, server, context.settings.workloadMs + 1000, false).then((phase) => { phases.push(phase); });
  else if (plan.workload === 'fio') crashPhase = fioCrashPhase(context, server);
  else ext4 = await ext4CrashPhase(context, server);
  return {
    afterCrash: async () => {
      await crashPhase;
      await ext4?.afterCrash();
    },
    duringRecovery: async (restarted) => {
      await stableReads(context, restarted);
      if (plan.workload === 'raw') phases.push(await rawPhase(context, restarted, 400, true));
      if (plan.workload === 'fio') context.result.invariants[2] = await fioVerify(context, restarted, 'during recovery');
    },
    verify: async (restarted) => {
      const image = await exportImage(context, restarted);
      const violations = oracle.verify(image.subarray(...sliceOf(areas(context.settings.sizeBytes).raw)), phases);
      const verdict = (invariant: 2 | 3): string => {
        const found = violations.filter((violation) => violation.invariant === invariant);
        return found.length === 0 ? 'pass' : `fail: ${found.length} sectors (${found.slice(0, 3).map((violation) => violation.detail).join('; ')})`;
      };
      if (plan.workload !== 'fio') context.result.invariants[2] = verdict(2);
      else if (context.result.invariants[2] === 'pass') context.result.invariants[2] = verdict(2);
      context.result.invariants[3] = verdict(3);
      if (plan.workload === 'fio') await fioRewrite(context, restarted);
      if (ext4) context.result.invariants[5] = await ext4Verify(context, restarted);
    },
  };
}

function sliceOf([start, length]: [number, number]): [number, number] {
  return [start, start + length];
}

function rawOracle(context: WorkloadContext): DurabilityOracle {
  let oracle = context.state.oracles.get('raw');
  if (!oracle) {
    const [start, length] = areas(context.settings.sizeBytes).raw;
    oracle = new DurabilityOracle(start, length);
    context.state.oracles.set('raw', oracle);
  }
  return oracle;
}

async function rawPhase(context: WorkloadContext, server: ServerProcess, ms: number, finalFlush: boolean): Promise<Phase> {
  const [start, length] = areas(context.settings.sizeBytes).raw;
  const journal = path.join(context.settings.workDir, `journal-${context.plan.index}-${finalFlush ? 'recovery' : 'crash'}.jsonl`);
  const result = await run(python, [workloadScript(), 'run', server.uri('crash'), String(context.plan.seed + (finalFlush ? 7 : 0)),
    String(ms / 1000), String(start), String(length), String(context.state.nextOpId), journal, ...(finalFlush ? ['--final-flush'] : [])],
  { timeoutMs: ms + 60_000 });
  if (result.code !== 0) throw new Error(`raw workload failed: ${result.stderr}`);
  const summary = JSON.parse(result.stdout.trim().split('\n').pop()!) as { ops: number; acked: number; nextId: number; serverAlive: boolean };
  context.state.nextOpId = summary.nextId;
  context.result.notes.push(`raw ${finalFlush ? 'during recovery' : 'before the crash'}: ${summary.acked} of ${summary.ops} requests acknowledged`);
  const entries = readJournal(journal);
  fs.rmSync(journal, { force: true });
  if (context.settings.writeLogs) context.state.rawPhases.push({ entries });
  return { entries };
}

/** Invariant 4: the same block read twice, with no write between, gives the same bytes, while recovery runs. */
async function stableReads(context: WorkloadContext, server: ServerProcess): Promise<void> {
  const result = await run(python, [workloadScript(), 'stable-reads', server.uri('crash'), String(context.plan.seed),
    '0', String(context.settings.sizeBytes), '256'], { timeoutMs: 60_000 });
  if (result.code !== 0) {
    context.result.invariants[4] = `fail: reads during recovery failed: ${result.stderr.trim().split('\n').pop()}`;
    return;
  }
  const reads = JSON.parse(result.stdout.trim()) as { compared: number; mismatches: number[] };
  context.result.invariants[4] = reads.mismatches.length === 0 ? 'pass'
    : `fail: ${reads.mismatches.length} of ${reads.compared} blocks read differently twice (at ${reads.mismatches.slice(0, 4).join(', ')})`;
}

export async function exportImage(context: WorkloadContext, server: ServerProcess): Promise<Buffer> {
  const file = path.join(context.settings.workDir, 'export.img');
  fs.rmSync(file, { force: true });
  const copy = await run('nbdcopy', [server.uri('crash'), file], { timeoutMs: 120_000 });
  if (copy.code !== 0) throw new Error(`nbdcopy failed: ${copy.stderr}`);
  const image = fs.readFileSync(file);
  fs.rmSync(file, { force: true });
  return image;
}

// fio: area A is written with verification headers and flushed before any crash; area B takes the crash.
function fioArgs(context: WorkloadContext, server: ServerProcess, half: 0 | 1, extra: string[]): string[] {
  const [start, length] = areas(context.settings.sizeBytes).fio;
  return ['--name=crash', '--ioengine=nbd', `--uri=${server.uri('crash')}`, '--rw=randwrite', '--bs=4k', '--iodepth=8',
    `--offset=${start + half * (length / 2)}`, `--size=${length / 2}`, '--verify=crc32c', `--randseed=${context.state.fioSeed}`,
    // A crashed job would otherwise leave its verify state file in the caller's working directory.
    '--verify_state_save=0', ...extra];
}

/**
 * Work a workload needs done before its first crash, on a server with no
 * crash planned and no fault triggered, so neither can land in the middle of
 * what the later checks rely on: fio's verified area is written and flushed,
 * ext4's filesystem is made.
 */
export function needsPreparation(context: WorkloadContext): boolean {
  const { plan, state } = context;
  return (plan.workload === 'fio' && !state.fioAreaWritten) || (plan.workload === 'ext4' && !state.ext4Made);
}

export async function prepareWorkload(context: WorkloadContext, server: ServerProcess): Promise<void> {
  if (context.plan.workload === 'ext4') await makeExt4(context, server);
  else await writeFioArea(context, server);
}

async function writeFioArea(context: WorkloadContext, server: ServerProcess): Promise<void> {
  context.state.fioSeed = context.plan.seed;
  const write = await run('fio', fioArgs(context, server, 0, ['--do_verify=0']), { timeoutMs: 120_000 });
  if (write.code !== 0) throw new Error(`fio could not write its verified area: ${write.stdout}${write.stderr}`);
  // The promise is made by a flush the harness sends itself, whatever fio's engine does at the end of a job.
  const flush = await run(python, ['-c', 'import nbd, sys; h = nbd.NBD(); h.connect_uri(sys.argv[1]); h.flush(); h.shutdown()',
    server.uri('crash')], { timeoutMs: 60_000 });
  if (flush.code !== 0) throw new Error(`flushing fio's verified area failed: ${flush.stderr}`);
  context.state.fioAreaWritten = true;
}

async function fioCrashPhase(context: WorkloadContext, server: ServerProcess): Promise<void> {
  // Random writes into the other half until the crash stops them (fio then exits with an error, as it should).
  await run('fio', fioArgs(context, server, 1, ['--do_verify=0', '--time_based', `--runtime=${Math.ceil(context.settings.workloadMs / 1000) + 2}`]),
    { timeoutMs: context.settings.workloadMs + 60_000 });
}

async function fioVerify(context: WorkloadContext, server: ServerProcess, when: string): Promise<string> {
  const verify = await run('fio', fioArgs(context, server, 0, ['--verify_only']), { timeoutMs: 120_000 });
  return verify.code === 0 ? 'pass' : `fail: fio --verify_only of the flushed area ${when}: ${(verify.stdout + verify.stderr).split('\n').filter((line) => /verify|bad|err/i.test(line)).slice(0, 3).join(' | ')}`;
}

/** After recovery the crashed half must take a full verified write pass. */
async function fioRewrite(context: WorkloadContext, server: ServerProcess): Promise<void> {
  const pass = await run('fio', fioArgs(context, server, 1, ['--do_verify=1']), { timeoutMs: 120_000 });
  if (pass.code !== 0) context.result.invariants[2] = `fail: fio write+verify after recovery: ${pass.stdout.slice(-400)}`;
}

interface Ext4Run {
  afterCrash(): Promise<void>;
}

async function ext4CrashPhase(context: WorkloadContext, server: ServerProcess): Promise<Ext4Run> {
  const [offsetBytes, sizeBytes] = areas(context.settings.sizeBytes).ext4;
  const workDir = path.join(context.settings.workDir, `ext4-${context.plan.index}`);
  const mountPoint = path.join(context.settings.workDir, 'mnt');
  const attachment = await attachThroughFuse(server.uri('crash'), workDir, { offsetBytes, sizeBytes });
  let writer: ChildProcess | undefined;
  let printed = '';
  try {
    try {
      await attachment.mount(mountPoint);
    } catch (error) {
      // The fault or the crash can come while the mount still writes (a full leg fails the superblock
      // write): then nothing is written and nothing promised this time; recovery is still checked.
      context.result.notes.push(`ext4: mount failed during the crash phase (${mountFailure(error as Error)})`);
      await attachment.detach();
      return { afterCrash: async () => undefined };
    }
    writer = spawn(python, [workloadScript(), 'files', mountPoint, String(context.plan.seed), String(context.settings.workloadMs / 1000 + 2),
      `i${context.plan.index}`], { stdio: ['ignore', 'pipe', 'ignore'] });
    writer.stdout!.on('data', (chunk: Buffer) => { printed += chunk.toString(); });
  } catch (error) {
    await attachment.detach();
    throw error;
  }
  const exited = new Promise<void>((resolve) => writer!.once('exit', () => resolve()));
  return {
    afterCrash: async () => {
      // The writer ends on the first I/O error; a writer stuck in the kernel is ended by PID.
      const ended = await Promise.race([exited.then(() => true), sleep(10_000).then(() => false)]);
      if (!ended) writer!.kill('SIGKILL');
      await detachQuietly(attachment);
      let fsynced = 0;
      for (const line of printed.split('\n')) {
        if (line.startsWith('# ')) context.result.notes.push(`ext4 writer: ${line.slice(2)}`);
        const [name, digest] = line.trim().split(' ');
        if (name && digest?.length === 64) {
          context.state.ext4Files.set(name, digest);
          fsynced += 1;
        }
      }
      context.result.notes.push(`ext4 writer: ${fsynced} files fsynced before the crash`);
    },
  };
}

async function makeExt4(context: WorkloadContext, server: ServerProcess): Promise<void> {
  const [offsetBytes, sizeBytes] = areas(context.settings.sizeBytes).ext4;
  const attachment = await attachThroughFuse(server.uri('crash'), path.join(context.settings.workDir, 'ext4-mkfs'), { offsetBytes, sizeBytes });
  try {
    await runOk('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', attachment.device], { timeoutMs: 120_000 });
  } finally {
    await attachment.detach();
  }
  context.state.ext4Made = true;
}

/** About 5 MiB of the filesystem's 28: room for every iteration's writer. */
const ext4FilesKept = 40;

function mountFailure(error: Error): string {
  const lines = error.message.split('\n');
  return (lines.find((line) => line.startsWith('stderr:')) ?? lines[0]).replace(/^stderr:\s*/, '').trim();
}

function checkFilesystem(device: string): Promise<RunResult> {
  return run('e2fsck', ['-fn', device], { timeoutMs: 120_000 });
}

function fsckWords(fsck: RunResult): string {
  return `e2fsck -fn exited ${fsck.code}: ${fsck.stdout.split('\n').filter((line) => line.trim() !== '').slice(0, 6).join(' | ')}`;
}

/** What e2fsck -fn and the kernel say about a filesystem that would not mount, for the failure report. */
async function fsckSummary(device: string): Promise<string> {
  const fsck = await checkFilesystem(device);
  const kernel = await run('dmesg', ['--notime']);
  const ext4Lines = kernel.code === 0 ? kernel.stdout.split('\n').filter((line) => /EXT4-fs|JBD2/.test(line)).slice(-3) : [];
  return fsckWords(fsck) + (ext4Lines.length > 0 ? `; kernel: ${ext4Lines.join(' | ')}` : '');
}

async function detachQuietly(attachment: LoopAttachment): Promise<void> {
  await attachment.detach().catch(() => undefined);
}

/** Invariant 5: the journal replays on mount, every fsynced file is intact, and e2fsck -fn is clean. */
async function ext4Verify(context: WorkloadContext, server: ServerProcess): Promise<string> {
  const [offsetBytes, sizeBytes] = areas(context.settings.sizeBytes).ext4;
  const mountPoint = path.join(context.settings.workDir, 'mnt');
  const attachment = await attachThroughFuse(server.uri('crash'), path.join(context.settings.workDir, `ext4-${context.plan.index}-verify`),
    { offsetBytes, sizeBytes });
  try {
    try {
      await attachment.mount(mountPoint);
    } catch (error) {
      const verdict = `fail: the recovered filesystem does not mount (${mountFailure(error as Error)}); ${await fsckSummary(attachment.device)}`;
      // Reported once: later iterations start from a new filesystem.
      context.state.ext4Made = false;
      context.state.ext4Files.clear();
      return verdict;
    }
    const damaged: string[] = [];
    for (const [name, digest] of context.state.ext4Files) {
      const file = path.join(mountPoint, name);
      const actual = fs.existsSync(file) ? crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex') : 'missing';
      if (actual !== digest) damaged.push(`${name} ${actual === 'missing' ? 'missing' : 'changed'}`);
    }
    // Reported once: a damaged file is not expected intact again.
    for (const entry of damaged) context.state.ext4Files.delete(entry.split(' ')[0]);
    // Keep the filesystem far from full, or later writers stop at ENOSPC before the crash and test
    // nothing: the oldest checked files go, and so does everything nobody was promised.
    for (const name of [...context.state.ext4Files.keys()].slice(0, Math.max(0, context.state.ext4Files.size - ext4FilesKept))) {
      context.state.ext4Files.delete(name);
    }
    for (const name of fs.readdirSync(mountPoint)) {
      if (!context.state.ext4Files.has(name) && name !== 'lost+found') fs.rmSync(path.join(mountPoint, name), { recursive: true, force: true });
    }
    await attachment.unmount(mountPoint);
    const fsck = await checkFilesystem(attachment.device);
    context.result.notes.push(`ext4: ${context.state.ext4Files.size} fsynced files checked`);
    if (damaged.length > 0) return `fail: ${damaged.length} fsynced files damaged (${damaged.slice(0, 4).join(', ')})`;
    if (fsck.code !== 0) return `fail: ${fsckWords(fsck)}`;
    return 'pass';
  } finally {
    await attachment.detach();
  }
}
