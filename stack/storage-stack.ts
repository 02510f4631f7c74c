import fs from 'node:fs';
import { CheckpointStore, checkpointFilePath } from '../cbt/checkpoint-store.js';
import { ChangeTrackingDevice } from '../cbt/tracking-device.js';
import { Backups } from '../cbt/backups.js';
import { noEvents } from '../blockdev/events.js';
import type { Logger } from 'pino';
import { type OpenedLeg, openLeg } from '../backends/leg-spec.js';
import { CheckedDevice } from '../blockdev/checked-device.js';
import type { EventSink } from '../blockdev/events.js';
import type { BlockDevice } from '../blockdev/types.js';
import { type Config, ConfigError } from '../config/schema.js';
import { CrashPoints } from '../faults/crash-points.js';
import { MirrorController, type MirrorSettings } from '../mirror/controller.js';
import type { AdminTarget } from '../observe/status-view.js';
import { PageCache } from '../pagecache/page-cache.js';
import { type Clock, systemClock } from '../sys/clock.js';
import { shutdownTopDown, Sweeper } from './top-down.js';

/**
 * One export's device chain, top first, and the background work that spans
 * its layers. Every link is a checked entry (CheckedDevice): NBD -> cache ->
 * mirror -> each leg (-> the crash toolkit's devices -> the leg file).
 */
export interface StorageStack {
  /** What clients talk to: the cache if configured, else the mirror or the plain leg. */
  device: BlockDevice;
  mirror: MirrorController | undefined;
  cache: PageCache | undefined;
  plain: OpenedLeg | undefined;
  /** The periodic top-down sweep (storage.sweepIntervalMs). */
  sweeper: Sweeper;
  crashPoints: CrashPoints;
  /** What the admin socket and the metrics read. */
  target: AdminTarget;
  /** Checkpoints and their changed blocks (a mirror only: crash safety rides on its region log). */
  checkpoints: CheckpointStore | undefined;
  /** Point-in-time backup views over the export (with checkpoints). */
  backups: Backups | undefined;
  /** Stops the sweeps, writes back and flushes top-down, closes every layer. */
  close(): Promise<void>;
}

export interface StackOptions {
  events?: EventSink;
  /** Armed from config.crash here; given, so a harness can reach its power-cut devices. */
  crashPoints?: CrashPoints;
  clock?: Clock;
}

export function mirrorSettings(config: Config): MirrorSettings {
  const { storage } = config;
  return {
    logPath: storage.log!,
    logWrap: storage.logWrap,
    legs: storage.legs.map((leg) => ({ ...leg })),
    sizeBytes: storage.sizeBytes,
    regionSizeBytes: storage.regionSizeBytes,
    readPolicy: storage.readPolicy,
    preferredLeg: storage.preferredLeg,
    resyncBytesPerSecond: storage.resyncBytesPerSecond,
    createIfMissing: true,
    force: storage.force,
  };
}

/** One plain leg (no storage.log): the export is the file (or thin pool) itself. */
export async function openPlainLeg(config: Config, logger: Logger, options: StackOptions = {}): Promise<OpenedLeg> {
  if (config.storage.legs.length !== 1) {
    throw new ConfigError('storage.legs', `${config.storage.legs.length} legs configured without storage.log`);
  }
  const leg = config.storage.legs[0];
  if (leg.thin && config.export.readOnly) throw new ConfigError('export.readOnly', 'a thin pool is served read-write');
  const opened = await openLeg(leg, undefined, logger, {
    readOnly: config.export.readOnly,
    createSizeBytes: config.export.readOnly ? undefined : config.storage.sizeBytes,
    events: options.events,
    powerCuts: options.crashPoints?.powerCuts,
  });
  logger.info({ path: leg.path, sizeBytes: opened.device.sizeBytes, thin: leg.thin !== undefined }, 'leg opened');
  return opened;
}

/**
 * Opens (or creates) the storage the configuration describes and composes
 * the chain over it: the mirror (or the plain leg), the page cache, and the
 * sweeper. The only place layers are put on top of each other.
 */
export async function openStorageStack(config: Config, logger: Logger, options: StackOptions = {}): Promise<StorageStack> {
  const crashPoints = options.crashPoints ?? new CrashPoints();
  const clock = options.clock ?? systemClock;
  if (config.crash) {
    crashPoints.arm(config.crash);
    logger.warn({ crash: config.crash }, 'crash point armed: this server will end itself there');
  }
  let mirror: MirrorController | undefined;
  let plain: OpenedLeg | undefined;
  if (config.storage.log !== undefined) {
    mirror = await MirrorController.open({ ...mirrorSettings(config), events: options.events, crashPoints }, logger);
  } else {
    plain = await openPlainLeg(config, logger, { ...options, crashPoints });
  }
  const below = mirror ? CheckedDevice.wrap(mirror.device, 'mirror') : plain!.device;
  const cache = config.cache && !config.export.readOnly
    ? new PageCache(below, { ...config.cache, logger: logger.child({ component: 'cache' }), events: options.events, clock })
    : undefined;
  const sweeper = new Sweeper({ mirror, cache }, config.storage.sweepIntervalMs, logger, clock);
  let checkpoints: CheckpointStore | undefined;
  // The checkpoint file lives beside the region log; a log on a block device has no folder of its own to hold it.
  const logOnBlockDevice = mirror !== undefined && fs.statSync(config.storage.log!).isBlockDevice();
  if (mirror && !logOnBlockDevice) {
    const { state } = mirror.device.log;
    checkpoints = CheckpointStore.open(checkpointFilePath(config.storage.log!), { mirrorUuid: state.mirrorUuid,
      deviceSizeBytes: state.deviceSizeBytes, regionSizeBytes: state.regionSizeBytes, granularityBytes: config.storage.checkpointGranularityBytes,
      regionsWithBitsSet: mirror.device.log.dirtyRegions(), events: options.events, crashPoints });
    const store = checkpoints;
    if (store.granularityBytes !== config.storage.checkpointGranularityBytes) {
      logger.warn({ configured: config.storage.checkpointGranularityBytes, kept: store.granularityBytes },
        'storage.checkpointGranularity applies once no checkpoint exists; the existing checkpoints keep theirs');
    }
    mirror.device.beforeClearingBits = () => store.persistBeforeClearing();
  }
  const top = cache ?? below;
  const tracker = checkpoints ? new ChangeTrackingDevice(top, checkpoints) : undefined;
  const backups = checkpoints && tracker ? new Backups(checkpoints, tracker, top, config.storage.log!, options.events ?? noEvents) : undefined;
  const device = tracker ? CheckedDevice.wrap(tracker, 'checkpoints') : cache ? CheckedDevice.wrap(cache, 'cache') : below;
  const target: AdminTarget = { mirror, cache, crashPoints, checkpoints, backups,
    checkpointsUnavailable: !mirror ? 'checkpoints need a mirror (its region log makes them crash-safe); this server exports one plain leg'
      : logOnBlockDevice ? `checkpoints need storage.log to be a file (their file lives beside it); ${config.storage.log} is a block device` : undefined,
    plain: plain ? { path: config.storage.legs[0].path, sizeBytes: below.sizeBytes, pool: plain.thin } : undefined };
  const close = async (): Promise<void> => {
    try {
      await backups?.stopAll();
      await sweeper.stop();
      if (mirror) await shutdownTopDown({ mirror, cache }, logger);
      else await device.flush().catch((error: unknown) => logger.error({ err: error }, 'final flush failed: data may not be durable'));
      // Marks made since the last sweep (a degraded stop keeps bits set, which cover them anyway).
      await checkpoints?.persistBeforeClearing().catch((error: unknown) => logger.error({ err: error }, 'checkpoint file not written at stop'));
    } finally {
      await device.close();
    }
  };
  return { device, mirror, cache, plain, sweeper, crashPoints, target, checkpoints, backups, close };
}
