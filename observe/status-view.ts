import { CheckpointError, type CheckpointInfo, CheckpointStore, checkpointFilePath } from '../cbt/checkpoint-store.js';
import { defaultGranularityBytes } from '../cbt/format.js';
import type { BackupViewStatus } from '../cbt/backup-view.js';
import type { Backups } from '../cbt/backups.js';
import fs from 'node:fs';
import type { CrashPoints } from '../faults/crash-points.js';
import { FileLock } from '../sys/file-lock.js';
import { ThinLeg, type PoolUsage } from '../backends/thin-leg.js';
import type { Config } from '../config/schema.js';
import type { LastCheck, MirrorController, MirrorStatus } from '../mirror/controller.js';
import { readLegLabel } from '../mirror/leg-media.js';
import type { RemoteLegStatus } from '../mirror/remote-legs.js';
import type { ResyncProgress } from '../mirror/resync.js';
import type { PageCache, PageCacheStatus } from '../pagecache/page-cache.js';
import { formatUuid, type LogState, regionsSet } from '../regionlog/format.js';
import { RegionLog } from '../regionlog/region-log.js';

/**
 * A running server's health, or from the files of a stopped mirror also
 * `resync-pending`: it stopped uncleanly and the next start resyncs its set
 * bits (nothing is resyncing now, so "resyncing" would be untrue).
 */
export type Health = 'optimal' | 'degraded' | 'resyncing' | 'failed' | 'resync-pending';

/** What a running server exposes to its operators (admin socket, metrics): a mirror, or one plain leg; either may have a cache above it. */
export interface AdminTarget {
  mirror?: MirrorController;
  cache?: PageCache;
  /** A plain export's leg (slot 0), for status and pool grow. */
  plain?: { path: string; sizeBytes: number; pool?: ThinLeg };
  /** The server's crash points and power-cut devices (the admin power-cut command). */
  crashPoints?: CrashPoints;
  /** Checkpoints for incremental backup (a mirror only). */
  checkpoints?: CheckpointStore;
  /** Point-in-time backup views. */
  backups?: Backups;
  /** Why this server has no checkpoints (a plain export, a region log on a block device). */
  checkpointsUnavailable?: string;
}

export interface LegReport {
  slot: number;
  path: string | null;
  uuid: string | null;
  state: string;
  rebuildMode: string;
  failedAt: string | null;
  /** Offline only: why the leg's label does not match the log (null when it does, or online). */
  labelProblem: string | null;
  pool: PoolUsage | null;
  /** A remote leg's link (online only; null for local legs and offline). */
  remote: RemoteLegStatus | null;
}

/**
 * What `status --json` prints, the same fields whether a running server
 * answered ("server") or the files were read ("files"); what one source
 * cannot know is null.
 */
export interface StatusReport {
  source: 'server' | 'files';
  kind: 'mirror' | 'plain';
  mirrorUuid: string | null;
  sizeBytes: number;
  regionSizeBytes: number | null;
  regionCount: number | null;
  health: Health;
  failure: string | null;
  /** Files only: whether the last server stopped cleanly. */
  cleanShutdown: boolean | null;
  /** The files are held by a process (a running server), so figures read from them may be behind. */
  inUse: boolean;
  bitsSet: number | null;
  legs: LegReport[];
  regions: MirrorStatus['regions'] | null;
  resync: (ResyncProgress & { bytesPerSecondLimit: number }) | null;
  lastCheck: LastCheck | null;
  cache: PageCacheStatus | null;
  /** Checkpoints for incremental backup and the bytes changed since each (a mirror only). */
  checkpoints: CheckpointInfo[] | null;
  /** Point-in-time backup views running (a server only). */
  backups: BackupViewStatus[] | null;
  counters: { sweeps: number; regionsCleared: number; logCommits: number; generation: number } | null;
}

/** mdadm --detail --test: 0 optimal, 1 degraded or resyncing, 2 failed (4, no mirror, is the caller's). */
export function exitCodeFor(health: Health): number {
  return health === 'optimal' ? 0 : health === 'failed' ? 2 : 1;
}

/** A running server's view of itself. */
/**
 * The export's health: the mirror's, unless the cache above it failed on its
 * own (a fatal writeback), which fails the export too.
 */
export function exportHealth(status: MirrorStatus, cache: PageCache | undefined): { health: Health; failure: string | undefined } {
  const failure = status.failure ?? cache?.failed?.message;
  return { health: failure ? 'failed' : status.health, failure };
}

export function serverStatus(target: AdminTarget): StatusReport {
  if (target.mirror) {
    const status = target.mirror.status();
    const { health, failure } = exportHealth(status, target.cache);
    return {
      source: 'server', kind: 'mirror', mirrorUuid: status.mirrorUuid, sizeBytes: status.sizeBytes,
      regionSizeBytes: status.regionSizeBytes, regionCount: status.regionCount, health,
      failure: failure ?? null, cleanShutdown: null, inUse: true, bitsSet: status.regions.bitsSet,
      legs: status.legs.map((leg) => ({ slot: leg.slot, path: leg.path, uuid: leg.uuid, state: leg.state,
        rebuildMode: leg.rebuildMode, failedAt: leg.failedAt ?? null, labelProblem: null, pool: leg.pool ?? null,
        remote: leg.remote ?? null })),
      regions: status.regions, resync: status.resync, lastCheck: status.lastCheck ?? null, cache: target.cache?.status() ?? null,
      checkpoints: target.checkpoints?.list() ?? null, backups: target.backups?.list() ?? null,
      counters: { sweeps: status.sweeps, regionsCleared: status.regionsCleared, logCommits: status.logCommits, generation: status.generation },
    };
  }
  const { plain, cache } = target;
  const failure = cache?.failed?.message;
  return {
    source: 'server', kind: 'plain', mirrorUuid: null, sizeBytes: plain?.sizeBytes ?? 0, regionSizeBytes: null, regionCount: null,
    health: failure ? 'failed' : 'optimal', failure: failure ?? null, cleanShutdown: null, inUse: true, bitsSet: null,
    legs: [{ slot: 0, path: plain?.path ?? null, uuid: null, state: 'in_sync', rebuildMode: 'none', failedAt: null, labelProblem: null,
      pool: plain?.pool?.usage() ?? null, remote: null }],
    regions: null, resync: null, lastCheck: null, cache: cache?.status() ?? null, checkpoints: null, backups: null, counters: null,
  };
}

/**
 * The checkpoints a stopped mirror's file holds, read as a restart would: widened by the regions whose bits are
 * set, so a list after a crash shows what the next backup will copy.
 */
export function offlineCheckpoints(logPath: string, state: LogState): CheckpointInfo[] {
  return CheckpointStore.open(checkpointFilePath(logPath), { mirrorUuid: state.mirrorUuid, deviceSizeBytes: state.deviceSizeBytes,
    regionSizeBytes: state.regionSizeBytes, granularityBytes: defaultGranularityBytes,
    regionsWithBitsSet: regionsSet(state.dirty, state.regionCount) }).list();
}

/** Offline status reports a damaged checkpoint file as no list; a start and `checkpoint list` say why. */
function checkpointsOrNull(logPath: string, state: LogState): CheckpointInfo[] | null {
  try {
    return offlineCheckpoints(logPath, state);
  } catch (error) {
    if (error instanceof CheckpointError) return null;
    throw error;
  }
}

/** The view from the files of a mirror no server answers for. */
export async function filesStatus(config: Config, logPath: string): Promise<StatusReport> {
  const { state } = RegionLog.inspect(logPath);
  const pools = await Promise.all(config.storage.legs.map(async (leg) => {
    if (!leg.thin || !fs.existsSync(leg.path)) return null;
    try {
      const pool = await ThinLeg.open({ path: leg.path, readOnly: true, lowWaterBytes: leg.thin.lowWaterBytes });
      const usage = pool.usage();
      await pool.close();
      return usage;
    } catch {
      return null;
    }
  }));
  const legs: LegReport[] = await Promise.all(state.legs.map(async (record, slot) => {
    const spec = config.storage.legs[slot];
    const legPath = spec?.path;
    let labelProblem: string | null = null;
    if (record.state === 'in_sync' || record.state === 'rebuilding') {
      if (!spec || (!spec.remote && !fs.existsSync(spec.path))) labelProblem = 'missing';
      else {
        const read = await readLegLabel(spec, state.deviceSizeBytes)
          .catch((error: unknown) => ({ label: undefined, problem: `unreachable: ${(error as Error).message}`, movedFromBytes: undefined }));
        if (!read.label) labelProblem = read.problem ?? 'no label';
        else if (!read.label.legUuid.equals(record.uuid)) labelProblem = `holds leg ${formatUuid(read.label.legUuid)}, not this slot's`;
        else if (read.movedFromBytes !== undefined) labelProblem = `the leg changed size (label found at its old end, byte ${read.movedFromBytes})`;
      }
    }
    return { slot, path: legPath ?? null, uuid: formatUuid(record.uuid), state: record.state, rebuildMode: record.rebuildMode,
      failedAt: record.failedAtMs ? new Date(record.failedAtMs).toISOString() : null, labelProblem, pool: pools[slot] ?? null, remote: null };
  }));
  const bitsSet = regionsSet(state.dirty, state.regionCount).length;
  const usable = legs.filter((leg) => leg.state === 'in_sync' && (leg.labelProblem === null || leg.labelProblem.startsWith('the leg changed size')));
  // A running server's log is unclean by design; only a stopped mirror's unclean log means a resync is due.
  const inUse = FileLock.holder(logPath) === 'exclusive';
  const health: Health = usable.length === 0 ? 'failed'
    : legs.some((leg) => leg.state !== 'in_sync' || leg.labelProblem !== null) ? 'degraded'
      : !inUse && !state.cleanShutdown && bitsSet > 0 ? 'resync-pending' : 'optimal';
  return {
    source: 'files', kind: 'mirror', mirrorUuid: formatUuid(state.mirrorUuid), sizeBytes: state.deviceSizeBytes,
    regionSizeBytes: state.regionSizeBytes, regionCount: state.regionCount, health,
    failure: usable.length === 0 ? 'no in-sync leg is usable' : null, cleanShutdown: state.cleanShutdown,
    inUse, bitsSet, legs,
    regions: null, resync: null, lastCheck: null, cache: null, checkpoints: checkpointsOrNull(logPath, state), backups: null, counters: null,
  };
}

/** The `exists` lines `events --now` starts with, like drbdsetup events2 --now; the last one marks the end of the snapshot. */
export function currentStateEvents(target: AdminTarget): Array<Record<string, unknown>> {
  const report = serverStatus(target);
  const time = new Date().toISOString();
  const lines: Array<Record<string, unknown>> = [
    { event: 'exists', object: 'mirror', time, health: report.health, failure: report.failure, mirrorUuid: report.mirrorUuid },
    ...report.legs.map((leg) => ({ event: 'exists', object: 'leg', time, slot: leg.slot, path: leg.path, state: leg.state,
      rebuildMode: leg.rebuildMode })),
  ];
  if (report.resync) {
    const { kind, running, regionsDone, regionsTotal, bytesCopied } = report.resync;
    lines.push({ event: 'exists', object: 'resync', time, kind, running, regionsDone, regionsTotal, bytesCopied });
  }
  if (report.lastCheck) lines.push({ event: 'exists', object: 'check', time, ...report.lastCheck });
  lines.push({ event: 'exists', object: '-', time });
  return lines;
}
