import fs from 'node:fs';
import type { Logger } from 'pino';
import { FileLeg } from '../backends/file-leg.js';
import { type LegSpec, type OpenedLeg, openLeg } from '../backends/leg-spec.js';
import type { FaultDevice } from '../faults/fault-device.js';
import { CrashPoints } from '../faults/crash-points.js';
import { wrapDevice, wrapsAnything } from '../faults/device-wrap.js';
import { formatUuid, type LegRecord, type LogState } from '../regionlog/format.js';
import { RegionLog } from '../regionlog/region-log.js';
import { lockIfExists } from '../sys/file-lock.js';
import { createMirror, MirrorSetupError } from './create.js';
import type { MirrorLeg } from './generation.js';
import { checkLeg } from './leg-check.js';
import { labelAreaBytes, type LegLabel, relocateLabel } from './leg-label.js';
import { writeLegLabel } from './leg-media.js';
import type { RemoteLeg } from '../backends/nbd-client/remote-leg.js';
import { applyLegEvent } from './leg-states.js';
import type { MirrorSettings } from './mirror-settings.js';
import { MirrorDevice } from './mirror-device.js';
import { ResyncEngine } from './resync.js';

/** What assembly hands the controller: the running device and engine, and what recovery must do next. */
export interface AssembledMirror {
device: MirrorDevice;
resync: ResyncEngine;
/** Regions found out of sync at start (what recovery has to resync). */
recoveryRegions: number;
/** Legs opened, by slot (undefined where faulty, empty or missing). */
opened: Array<OpenedLeg | undefined>;
logFault: FaultDevice | undefined;
/** Slots whose full rebuild must (re)start. */
fullRebuilds: number[];
}

/**
 * Creates the mirror on first start (when nothing exists yet), opens the log
 * (over crash-toolkit devices if configured), checks every leg's label,
 * takes in grown or forced legs, stamps the in-sync legs with a new events
 * value, and marks what an unclean stop left to resync.
 */
export async function assembleMirror(settings: MirrorSettings, logger: Logger): Promise<AssembledMirror> {
  const { logPath } = settings;
  if (!fs.existsSync(logPath)) {
    // A remote export always exists; whether it holds a leg is for create to find out.
    const existingLegs = settings.legs.filter((leg) => !leg.remote && fs.existsSync(leg.path)).map((leg) => leg.path);
    if (existingLegs.length > 0 || !settings.createIfMissing) {
      throw new MirrorSetupError(`region log ${logPath} does not exist` + (existingLegs.length > 0
        ? `, but ${existingLegs.join(', ')} do; refusing to guess. Restore the log, or run nbd-mirror create --force to start a new mirror (their data is lost)`
        : '; run nbd-mirror create first'));
    }
    const created = await createMirror({
      logPath, legs: settings.legs, sizeBytes: settings.sizeBytes, regionSizeBytes: settings.regionSizeBytes,
    });
    logger.info({ mirror: formatUuid(created.mirrorUuid), legs: settings.legs.length, sizeBytes: settings.sizeBytes,
      regionSizeBytes: settings.regionSizeBytes, initialSync: created.initialSync }, 'created a new mirror');
  }
  const crashPoints = settings.crashPoints ?? new CrashPoints();
  const log = RegionLog.open(logPath, { crashPoints });
  try {
    let logFault: FaultDevice | undefined;
    if (wrapsAnything(settings.logWrap)) {
      const file = await FileLeg.open({ path: logPath });
      const wrapped = await wrapDevice(file, settings.logWrap, 'log', crashPoints.powerCuts);
      log.routeUpdatesThrough(wrapped.device);
      logFault = wrapped.fault;
      logger.warn({ path: logPath, faults: wrapped.fault !== undefined, powerCut: wrapped.powerCut?.options.policy,
        writeLog: wrapped.writeLog?.path }, 'region log runs over crash-injection devices');
    }
    return { ...await assembleFromLog(log, settings, logger), logFault };
  } catch (error) {
    await log.close();
    throw error;
  }
}

async function assembleFromLog(log: RegionLog, settings: MirrorSettings, logger: Logger): Promise<Omit<AssembledMirror, 'logFault'>> {
  const { state } = log;
  if (settings.legs.length !== state.legs.length) {
    throw new MirrorSetupError(`the configuration lists ${settings.legs.length} legs, the region log ${log.path} has ${state.legs.length}`);
  }
  const wasClean = state.cleanShutdown;
  const legs: Array<MirrorLeg | undefined> = [];
  const opened: Array<OpenedLeg | undefined> = [];
  const fullRebuilds: number[] = [];
  try {
    for (let slot = 0; slot < state.legs.length; slot += 1) {
      const record = state.legs[slot];
      const spec = settings.legs[slot];
      const { path } = spec;
      if (record.state === 'faulty' || record.state === 'empty') {
        logger.warn({ slot, path }, 'leg is faulty in the log: not used until re-add or replace');
        legs.push(undefined);
        opened.push(undefined);
        continue;
      }
      // Held from the label check on: another process must not change the leg under it.
      const lock = spec.remote ? undefined : lockIfExists(path, 'leg');
      try {
        const verdict = await checkLeg(spec, slot, state);
        if (verdict.kind === 'missing') {
          logger.error({ slot, path, problem: verdict.problem }, 'leg missing: marked faulty, starting degraded');
          markFaulty(record);
          legs.push(undefined);
          opened.push(undefined);
          continue;
        }
        if (verdict.kind === 'ok' && verdict.grown) takeGrownLeg(path, slot, verdict.grown, logger);
        if (verdict.kind === 'refused') {
          if (!settings.force) {
            throw new MirrorSetupError(`${verdict.problem}. ${verdict.hint ?? 'Start with --force to take it in and rebuild it fully from the other legs (whatever it holds now is overwritten)'}`);
          }
          logger.warn({ slot, path, problem: verdict.problem }, 'forced: taking the leg in and rebuilding it fully');
          await stampLeg(spec, state, slot, record.events);
          applyLegEvent(record, 'forced');
        }
        const leg = await openLeg(spec, state.deviceSizeBytes, logger, { name: `leg${slot}`, events: settings.events,
          powerCuts: log.crashPoints.powerCuts });
        legs.push(mirrorLeg(slot, spec, leg));
        opened.push(leg);
      } finally {
        lock?.release();
      }
      if (record.state === 'rebuilding' && record.rebuildMode === 'full') fullRebuilds.push(slot);
    }
    const refuseWithoutInSyncLeg = (): void => {
      if (!legs.some((leg, slot) => leg && state.legs[slot].state === 'in_sync')) {
        throw new MirrorSetupError('no in-sync leg is available; the mirror cannot start (check the leg paths, or restore a leg)');
      }
    };
    refuseWithoutInSyncLeg();
    await bumpEvents(log, legs, opened, settings.legs, logger);
    refuseWithoutInSyncLeg();
  } catch (error) {
    await Promise.allSettled(legs.map((leg) => leg?.device.close()));
    throw error;
  }
  const device = new MirrorDevice({ log, legs, readPolicy: settings.readPolicy, preferredSlot: settings.preferredLeg, logger,
    quietSweepsBeforeClean: settings.quietSweepsBeforeClean, events: settings.events, crashPoints: log.crashPoints });
  // After a crash every set bit may hide a difference between legs; a re-add
  // in progress needs every set bit copied to the returning leg.
  const bitmapRebuild = state.legs.some((record) => record.state === 'rebuilding' && record.rebuildMode === 'bitmap');
  if (!wasClean || bitmapRebuild) for (const region of log.dirtyRegions()) device.regions.markOutOfSync(region);
  const recoveryRegions = device.regions.outOfSyncRegions;
  logger.info({ mirror: formatUuid(state.mirrorUuid), cleanShutdown: wasClean, regionsToResync: recoveryRegions,
    bitsSet: log.dirtyRegions().length }, wasClean ? 'mirror assembled after a clean shutdown' : 'mirror assembled after an unclean shutdown');
  const resync = new ResyncEngine(device, { bytesPerSecond: settings.resyncBytesPerSecond, logger, events: settings.events });
  return { device, resync, recoveryRegions, opened, fullRebuilds };
}

/** A leg that grew keeps its data; its label moves from the old end to the new one. */
export function takeGrownLeg(path: string, slot: number, grown: { label: LegLabel; labelAtBytes: number; legBytes: number }, logger: Logger): void {
  logger.warn({ slot, path, oldEndBytes: grown.labelAtBytes + labelAreaBytes, newSizeBytes: grown.legBytes },
    'the leg grew: its label was at its old end; moving it to the new end (the data is unchanged)');
  relocateLabel(path, grown.label, grown.labelAtBytes);
}

/** Labels the leg as this mirror's leg in `slot`, at `events` (over `open`, a remote leg's running connection, if given). */
export async function stampLeg(leg: LegSpec, state: LogState, slot: number, events: bigint, open?: RemoteLeg): Promise<void> {
  await writeLegLabel(leg, { mirrorUuid: state.mirrorUuid, legUuid: state.legs[slot].uuid, slot, dataSizeBytes: state.deviceSizeBytes, events },
    open);
}

/** The mirror's view of an opened leg. */
export function mirrorLeg(slot: number, spec: LegSpec, opened: OpenedLeg): MirrorLeg {
  return { slot, path: spec.path, device: opened.device, remote: opened.remote, writeMostly: spec.writeMostly, pendingReads: 0 };
}

function markFaulty(record: LegRecord): void {
  applyLegEvent(record, 'failed');
}

/**
 * Stamps the in-sync legs with a new events value, so a copy of a leg taken
 * before this start is recognisable as stale later. Two log commits bracket
 * the label writes; a crash between them leaves labels at either value, and
 * labelUpdatePending tells the next start that both are fine.
 */
async function bumpEvents(log: RegionLog, legs: Array<MirrorLeg | undefined>, opened: Array<OpenedLeg | undefined>, specs: LegSpec[],
  logger: Logger): Promise<void> {
  const { state } = log;
  state.eventsPrevious = state.eventsCurrent;
  state.eventsCurrent += 1n;
  state.labelUpdatePending = true;
  state.cleanShutdown = false;
  await log.commit();
  for (const [slot, record] of state.legs.entries()) {
    const leg = legs[slot];
    if (!leg || record.state !== 'in_sync') continue;
    try {
      await stampLeg(specs[slot], state, slot, state.eventsCurrent, leg.remote);
    } catch (error) {
      // A remote link can break between the label check and this stamp. The leg is then away, as one that broke a
      // moment later would be: faulty, and back by itself through a bitmap re-add. Its label holds the old value
      // or, if the write landed and only the reply was lost, the new one: the record takes the new one, so a
      // re-add accepts either (a faulty record refuses only a label newer than it). A local leg that cannot be
      // written stops the start, as before.
      if (!specs[slot].remote) throw error;
      logger.error({ slot, path: specs[slot].path, err: (error as Error).message },
        'remote leg lost while its label was stamped at start: marked faulty, starting degraded');
      record.events = state.eventsCurrent;
      applyLegEvent(record, 'failed');
      await leg.device.close().catch(() => undefined);
      legs[slot] = undefined;
      opened[slot] = undefined;
      continue;
    }
    record.events = state.eventsCurrent;
  }
  state.labelUpdatePending = false;
  await log.commit();
}
