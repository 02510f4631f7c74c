import type { EventSink } from '../blockdev/events.js';
import type { LegSpec } from '../backends/leg-spec.js';
import type { PoolUsage } from '../backends/thin-leg.js';
import type { CrashPoints } from '../faults/crash-points.js';
import type { DeviceWrap } from '../faults/device-wrap.js';
import type { MirrorDevice, ReadPolicy } from './mirror-device.js';
import type { ReconnectPolicy, RemoteLegStatus } from './remote-legs.js';
import type { ResyncProgress } from './resync.js';

/** storage.sweepIntervalMs: how often the mirror's quiet regions are synced and cleared (0: never). */
export const sweepIntervalBounds = { min: 0, max: 3_600_000, default: 3000 };

export interface MirrorSettings {
  logPath: string;
  legs: LegSpec[];
  /** Used when the mirror is created on first start. */
  sizeBytes: number;
  regionSizeBytes: number;
  readPolicy: ReadPolicy;
  preferredLeg?: number;
  resyncBytesPerSecond: number;
  /** Crash-toolkit devices under the region log. */
  logWrap?: DeviceWrap;
  /** Create log and legs when none of them exists yet. */
  createIfMissing: boolean;
  /** Take in refused legs (foreign, stale, unlabelled) and rebuild them fully. */
  force: boolean;
  /** See MirrorOptions.quietSweepsBeforeClean. */
  quietSweepsBeforeClean?: number;
  /** Where leg, resync, check and sweep events are reported. */
  events?: EventSink;
  /** The server's crash points and power-cut devices; a fresh, unarmed set when not given. */
  crashPoints?: CrashPoints;
  /** How a failed remote leg is retried (remote-legs.ts); defaults when not given. */
  reconnect?: ReconnectPolicy;
}

/** The last check's outcome, kept for status as md keeps mismatch_cnt. */
export interface LastCheck {
  finishedAt: string;
  /** False when fewer than two legs were in sync: nothing was compared, so no mismatch count exists. */
  compared: boolean;
  mismatches: number;
  regionsCompared: number;
  legsCompared: number[];
  repair: boolean;
}

export interface MirrorStatus {
  mirrorUuid: string;
  sizeBytes: number;
  regionSizeBytes: number;
  regionCount: number;
  health: 'optimal' | 'degraded' | 'resyncing' | 'failed';
  failure?: string;
  legs: Array<{ slot: number; path: string; uuid: string; state: string; rebuildMode: string; failedAt?: string;
    pool?: PoolUsage;
    remote?: RemoteLegStatus }>;
  regions: ReturnType<MirrorDevice['regions']['counts']>;
  resync: ResyncProgress & { bytesPerSecondLimit: number };
  lastCheck?: LastCheck;
  sweeps: number;
  regionsCleared: number;
  logCommits: number;
  generation: number;
}
