import fs from 'node:fs';
import path from 'node:path';
import { adminRequest } from '../admin-client.js';
import type { MirrorStatus } from '../../mirror/controller.js';
import { type FaultProxy, startFaultProxy } from './fault-proxy.js';
import { type CrashTestSettings, describePlan, isLinkFault, type IterationPlan, pathsIn, type Paths, planIteration, pointText, writeConfig } from './plan.js';
import { type ServerProcess, startServerProcess } from './server-process.js';
import { checkpointsHoldChanges, rotateCheckpoints } from './checkpoint-oracle.js';
import { exportImage, needsPreparation, prepareWorkload, runWorkload, type WorkloadContext, type WorkloadState } from './workloads.js';

/** 'pass', 'fail: why', or 'n/a' (the invariant does not apply to this iteration). */
export type Verdict = string;

/** 1-5: docs/crash-testing.md; 6: no checkpoint reports a changed block clean. */
export type InvariantNumber = 1 | 2 | 3 | 4 | 5 | 6;

export interface IterationResult {
  plan: IterationPlan;
  /** What actually ended the first server: the planned crash, or a kill when a crash point was not reached. */
  crashed: string;
  /** For crash "point": the point struck where planned (one never reached ends in kill -9 instead). */
  pointStruck: boolean;
  recoveryRegions: number;
  resyncBytes: number;
  invariants: Record<InvariantNumber, Verdict>;
  notes: string[];
}

export interface CrashTestReport {
  seed: number;
  results: IterationResult[];
  failures: number;
  crashes: number;
  recoveries: number;
  elapsedMs: number;
}

export type Say = (line: string) => void;

const adminTimeoutMs = 120_000;

/**
 * The crash-test loop: start the server, drive a workload through a real
 * client, crash it, restart it, let recovery run, and check the invariants
 * (docs/crash-testing.md). The mirror lives on in the work folder across
 * iterations, so each one starts from the state the last one left.
 */
export function newWorkloadState(): WorkloadState {
  return { nextOpId: 1, oracles: new Map(), ext4Files: new Map(), fioAreaWritten: false, rawPhases: [], checkpoints: [] };
}

export async function runCrashTest(settings: CrashTestSettings, say: Say, state = newWorkloadState()): Promise<CrashTestReport> {
  fs.mkdirSync(settings.workDir, { recursive: true });
  const paths = pathsIn(settings.workDir);
  const started = Date.now();
  const results: IterationResult[] = [];
  say(`crash-test seed ${settings.seed}: up to ${settings.iterations} iterations or ${Math.round(settings.timeLimitMs / 1000)} s; ` +
    `replay with --seed ${settings.seed} and the same options`);
  const end = settings.firstIteration + settings.iterations;
  const link = settings.remoteLeg ? await startRemoteLeg(settings, say) : undefined;
  try {
    for (let index = settings.firstIteration; index < end && Date.now() - started < settings.timeLimitMs; index += 1) {
      const plan = planIteration(settings, index);
      say(describePlan(plan));
      const result = await runIteration(settings, plan, paths, state, say, link);
      results.push(result);
      const failed = Object.values(result.invariants).filter((verdict) => verdict.startsWith('fail'));
      say(`  crashed: ${result.crashed}; recovery resynced ${result.recoveryRegions} regions (${formatBytes(result.resyncBytes)}); ` +
        `invariants ${Object.entries(result.invariants).map(([key, verdict]) => `${key}:${verdict.split(':')[0]}`).join(' ')}`);
      for (const note of result.notes) say(`  ${note}`);
      if (failed.length > 0) {
        for (const verdict of failed) say(`  FAIL ${verdict}`);
        say(`  rerun this iteration alone: --seed ${settings.seed} --first-iteration ${index} (from a fresh mirror)`);
      }
    }
  } finally {
    await link?.stop();
  }
  return {
    seed: settings.seed,
    results,
    failures: results.filter((result) => Object.values(result.invariants).some((verdict) => verdict.startsWith('fail'))).length,
    crashes: results.length,
    recoveries: results.filter((result) => result.invariants[1] !== 'n/a').length,
    elapsedMs: Date.now() - started,
  };
}

/** A remote leg's host for the whole run: its export outlives every crash of the primary, behind a link that can fail. */
interface RemoteLink {
  uri: string;
  proxy: FaultProxy;
  /** Ends the remote's server, with SIGKILL or SIGTERM (a stop that marks nothing on the remote's side). */
  stopRemote(abruptly: boolean): Promise<void>;
  /** Serves the export again on the same port (no-op while it runs). */
  startRemote(): Promise<void>;
  /** Link faults scheduled for this iteration (heal, restart) run here, so recovery can wait for them. */
  scheduled: Array<Promise<void>>;
  /** Every scheduled action done, the link healed and the remote serving: the leg's way back is open. */
  restore(): Promise<void>;
  stop(): Promise<void>;
}

async function startRemoteLeg(settings: CrashTestSettings, say: Say): Promise<RemoteLink> {
  const file = path.join(settings.workDir, 'remote-leg1.img');
  // The export holds the data and the leg's label after it, as a local leg file does.
  const serveArgs = ['--leg', file, '--size', String(settings.sizeBytes + 8192), '--no-unix', '--no-cache'];
  let remote: ServerProcess | undefined = await startServerProcess(serveArgs);
  const { port } = remote;
  const proxy = await startFaultProxy({ host: '127.0.0.1', port });
  const uri = `nbd://127.0.0.1:${proxy.port}/`;
  say(`remote leg1: ${file} served by another nbd-mirror process (pid ${remote.pid}), reached as ${uri} through a fault proxy`);
  const link: RemoteLink = {
    uri, proxy, scheduled: [],
    stopRemote: async (abruptly) => {
      const running = remote;
      remote = undefined;
      if (abruptly) await running?.kill();
      else await running?.stop(60_000);
    },
    startRemote: async () => {
      remote ??= await startServerProcess([...serveArgs, '--listen', `127.0.0.1:${port}`]);
    },
    restore: async () => {
      await Promise.all(link.scheduled.splice(0));
      proxy.heal();
      await link.startRemote();
    },
    stop: async () => {
      await proxy.close();
      await remote?.stop(60_000);
    },
  };
  return link;
}

async function runIteration(settings: CrashTestSettings, plan: IterationPlan, paths: Paths, state: WorkloadState,
  say: Say, link: RemoteLink | undefined): Promise<IterationResult> {
  writeConfig(settings, plan, paths, link?.uri);
  const result: IterationResult = {
    plan, crashed: '', pointStruck: false, recoveryRegions: 0, resyncBytes: 0, invariants: { 1: 'n/a', 2: 'n/a', 3: 'n/a', 4: 'n/a', 5: 'n/a', 6: 'n/a' }, notes: [],
  };
  const pointArgs = plan.point && plan.point.name !== 'resync.between-read-and-write'
    ? ['--crash-point', pointText(plan)] : [];
  const context: WorkloadContext = { settings, plan, paths, state, say, result };
  if (needsPreparation(context)) {
    const preparing = await startServerProcess(['--config', paths.config]);
    try {
      await prepareWorkload(context, preparing);
    } finally {
      await preparing.stop(60_000);
    }
  }
  const first = await startServerProcess(['--config', paths.config, ...pointArgs]);
  const schedule = (): Promise<void> => crashOnSchedule(first, plan, paths, settings.workloadMs, link).then((ended) => {
    result.crashed = ended.crashed;
    result.pointStruck = ended.pointStruck;
  });
  // The ext4 workload mounts a filesystem before its writer starts; on a loaded machine that alone can take
  // longer than the planned crash time. Its crash clock starts once the writer runs, so the crash lands in the
  // workload it is meant to interrupt. The other workloads start writing at once.
  let crashed = plan.workload === 'ext4' ? undefined : schedule();
  const workload = await runWorkload(context, first);
  crashed ??= schedule();
  await crashed;
  await workload.afterCrash();

  // Recovery; a crash point inside resync strikes here, during the first restart.
  let server: ServerProcess;
  if (plan.point?.name === 'resync.between-read-and-write') {
    const recovering = await startServerProcess(['--config', paths.config, '--crash-point', pointText(plan)]).catch((error: Error) => {
      // Resync starts before the server listens, so an early hit can end it first: ended by a signal, that is the crash.
      if (!/exited with null before listening/.test(error.message)) throw error;
      result.notes.push(`crash point ${plan.point!.name} fired during recovery, before the server listened`);
      result.pointStruck = true;
      return undefined;
    });
    if (recovering) {
      result.recoveryRegions = Number(recovering.logs.find((entry) => entry.msg === 'listening')?.recoveryRegions ?? 0);
      const died = await Promise.race([recovering.exited.then(() => true), sleep(4000).then(() => false)]);
      result.pointStruck = died;
      if (died) result.notes.push(`crash point ${plan.point.name} fired during recovery (${crashLine(recovering)})`);
      else {
        result.notes.push(`crash point ${plan.point.name} not reached during recovery; killed instead`);
        await recovering.kill();
      }
    }
  }
  server = await startServerProcess(['--config', paths.config]);
  try {
    const listening = server.logs.find((entry) => entry.msg === 'listening');
    result.recoveryRegions = Math.max(result.recoveryRegions, Number(listening?.recoveryRegions ?? 0));
    await workload.duringRecovery(server);
    const status = await waitResync(paths.admin);
    result.resyncBytes = status.resync.bytesCopied + status.resync.bytesZeroed;
    result.invariants[1] = await legsAgree(paths.admin, 'after recovery');
    if (link) {
      // The remote leg must come back by itself once its link and server are back, never through the harness:
      // a leg left out after a restart, with status claiming a reconnect, is a failure of its own.
      await link.restore();
      const back = await remoteLegBack(paths.admin, remoteRejoinMs);
      if (back.inSync) {
        result.notes.push(back.wasAway ? `leg1 (remote) in sync by itself ${back.ms} ms after its link and server were back`
          : 'leg1 (remote) in sync by itself when its link and server were back');
      } else {
        result.invariants[1] = `fail: remote leg1 did not come back by itself within ${remoteRejoinMs} ms of its link and server ` +
          `being back: ${JSON.stringify(back.leg)}`;
      }
    }
    const faulty = status.legs.filter((leg) => leg.state === 'faulty' && !(link && leg.slot === 1));
    for (const leg of faulty) {
      await adminRequest(paths.admin, { command: 're-add', slot: leg.slot }, undefined, adminTimeoutMs);
      const readded = await waitResync(paths.admin);
      result.notes.push(`leg${leg.slot} was faulty; re-added, ${readded.resync.regionsTotal} regions resynced`);
      const again = await legsAgree(paths.admin, `after re-adding leg${leg.slot}`);
      if (result.invariants[1] === 'pass') result.invariants[1] = again;
    }
    await workload.verify(server);
    // With the server idle: the checkpoints made in earlier iterations still report every change since (6),
    // then one is rotated. One read of the export serves both.
    const image = await exportImage(context, server);
    result.invariants[6] = await checkpointsHoldChanges(server, image, state.checkpoints);
    result.notes.push(...await rotateCheckpoints(paths.admin, image, state.checkpoints, plan.index, plan.seed));
  } finally {
    const code = await server.stop(60_000);
    if (code !== 0) result.notes.push(`clean shutdown exited ${code}`);
  }
  return result;
}

const pointGraceMs = 2500;

/** Ends the first server as planned; resolves with what happened, and whether a planned crash point struck. */
async function crashOnSchedule(server: ServerProcess, plan: IterationPlan, paths: Paths, workloadMs: number, link: RemoteLink | undefined):
  Promise<{ crashed: string; pointStruck: boolean }> {
  const ended = (crashed: string, pointStruck = false): { crashed: string; pointStruck: boolean } => ({ crashed, pointStruck });
  const crashAtMs = Math.round(plan.crashAt * workloadMs);
  if (isLinkFault(plan.fault)) {
    // The link breaks (or the remote's server ends, killed or stopped) mid-workload and comes back before the
    // crash, or after it, while the primary is down.
    const backAtMs = crashAtMs * 0.3 + (plan.seed % 2 === 0 ? crashAtMs * 0.6 : crashAtMs * 1.2);
    const breaking = sleep(crashAtMs * 0.3).then(async () => {
      if (plan.fault === 'link-cut') link!.proxy.cut();
      else if (plan.fault === 'link-stall') link!.proxy.stall();
      else await link!.stopRemote(plan.seed % 4 < 2);
    });
    link!.scheduled.push(breaking, sleep(backAtMs).then(async () => {
      await breaking;
      link!.proxy.heal();
      await link!.startRemote();
    }));
  } else if (plan.fault !== 'none') {
    void sleep(crashAtMs * 0.4).then(() => adminRequest(paths.admin, { command: 'fault', slot: plan.faultSlot, action: 'trigger' }, undefined, 5000))
      .catch(() => undefined);
    if (plan.fault === 'leg-enospc') {
      // Space comes back before the crash: the cache's retried writeback and later flushes must then succeed.
      void sleep(crashAtMs * 0.7).then(() => adminRequest(paths.admin, { command: 'fault', slot: plan.faultSlot, action: 'heal' }, undefined, 5000))
        .catch(() => undefined);
    }
  }
  if (plan.crash === 'point' && plan.point!.name !== 'resync.between-read-and-write') {
    // The clients keep writing a while past workloadMs, and once they stop regions go quiet and the
    // sweeper's points come: waiting that long lets most planned points strike.
    const died = await Promise.race([server.exited.then(() => true), sleep(workloadMs + pointGraceMs).then(() => false)]);
    if (died) return ended(`crash point ${pointText(plan)} (${crashLine(server)})`, true);
    await server.kill();
    return ended(`crash point ${pointText(plan)} not reached; kill -9 at ${workloadMs + pointGraceMs} ms`);
  }
  await Promise.race([server.exited, sleep(crashAtMs)]);
  if (plan.crash === 'power-cut') {
    try {
      await adminRequest(paths.admin, { command: 'power-cut' }, undefined, 5000);
    } catch (error) {
      await server.kill();
      return ended(`power cut refused (${(error as Error).message}); kill -9`);
    }
    const died = await Promise.race([server.exited.then(() => true), sleep(15_000).then(() => false)]);
    if (!died) {
      await server.kill();
      return ended('power cut did not end the server in 15 s; kill -9');
    }
    return ended(`power cut at ${crashAtMs} ms (${crashLine(server)})`);
  }
  await server.kill();
  return ended(`kill -9 at ${crashAtMs} ms`);
}

function crashLine(server: ServerProcess): string {
  const line = server.logs.find((entry) => entry.msg === 'crash injected') as
    { powerCut?: Array<{ name: string; keptSectors: number; droppedSectors: number }> } | undefined;
  if (!line) return 'no report';
  if (!line.powerCut || line.powerCut.length === 0) return 'killed';
  return line.powerCut.map((cut) => `${cut.name} kept ${cut.keptSectors} dropped ${cut.droppedSectors}`).join(', ');
}

/** How long a remote leg may take to come back by itself once its link and server are back (the reconnector's backoff is 5 s at most). */
const remoteRejoinMs = 30_000;

/** Waits for the remote leg (slot 1) to be in sync with nothing left to copy, without asking for it. */
async function remoteLegBack(admin: string, timeoutMs: number): Promise<{ inSync: boolean; wasAway: boolean; ms: number; leg: unknown }> {
  const started = Date.now();
  let wasAway = false;
  for (;;) {
    const status = await adminRequest(admin, { command: 'status' }, undefined, adminTimeoutMs) as MirrorStatus;
    const leg = status.legs[1];
    if (leg.state === 'in_sync' && status.regions.outOfSync === 0 && !status.resync.running) {
      return { inSync: true, wasAway, ms: Date.now() - started, leg };
    }
    wasAway = true;
    if (Date.now() - started > timeoutMs) return { inSync: false, wasAway, ms: Date.now() - started, leg };
    await sleep(200);
  }
}

export async function waitResync(admin: string): Promise<MirrorStatus> {
  const deadline = Date.now() + adminTimeoutMs;
  for (;;) {
    const status = await adminRequest(admin, { command: 'wait-resync' }, undefined, adminTimeoutMs) as MirrorStatus;
    if (status.regions.outOfSync === 0 && !status.resync.running) return status;
    if (Date.now() > deadline) throw new Error(`resync did not finish in ${adminTimeoutMs} ms: ${JSON.stringify(status.regions)}`);
    await sleep(200);
  }
}

async function legsAgree(admin: string, when: string): Promise<Verdict> {
  const check = await adminRequest(admin, { command: 'check' }, undefined, adminTimeoutMs) as { mismatchedRegions: number[] };
  return check.mismatchedRegions.length === 0 ? 'pass'
    : `fail: ${when}, check found ${check.mismatchedRegions.length} mismatched regions (${check.mismatchedRegions.slice(0, 8).join(', ')})`;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function formatBytes(bytes: number): string {
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
  if (bytes >= 1 << 10) return `${(bytes / (1 << 10)).toFixed(0)} KiB`;
  return `${bytes} B`;
}

export function workloadScript(): string {
  return path.join(import.meta.dirname, '..', '..', '..', 'tools', 'crash-test', 'raw_workload.py');
}
