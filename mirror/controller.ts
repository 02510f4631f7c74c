import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import type { Logger } from 'pino';
import type { OpenedLeg } from '../backends/leg-spec.js';
import { type LegSpec, openLeg } from '../backends/leg-spec.js';
import type { PoolGrowth, PoolUsage, ThinLeg } from '../backends/thin-leg.js';
import { BlockError } from '../blockdev/errors.js';
import { type EventSink, noEvents } from '../blockdev/events.js';
import type { FaultDevice } from '../faults/fault-device.js';
import { formatUuid, type LegRecord } from '../regionlog/format.js';
import { fileIdentity, lockIfExists } from '../sys/file-lock.js';
import { assembleMirror, mirrorLeg, stampLeg, takeGrownLeg } from './assemble.js';
import { compareRegions, type CompareResult } from './compare.js';
import { MirrorSetupError } from './create.js';
import { checkLeg } from './leg-check.js';
import { prepareLeg } from './leg-media.js';
import { isNbdUri } from '../backends/nbd-client/nbd-uri.js';
import { LegUnreachableError, RemoteReconnector, type RemoteLegStatus, remoteLegSpec } from './remote-legs.js';
import { applyLegEvent } from './leg-states.js';
import { Rebuilds } from './rebuilds.js';
import type { LastCheck, MirrorSettings, MirrorStatus } from './mirror-settings.js';
import type { MirrorDevice } from './mirror-device.js';
import type { MirrorLeg } from './generation.js';
import type { ResyncEngine, ResyncProgress } from './resync.js';

export type { LastCheck, MirrorSettings, MirrorStatus } from './mirror-settings.js';

/**
 * Owns a running mirror: opens it (mirror/assemble.ts), runs its rebuilds
 * and the resync engine, and carries out the operator's commands (re-add,
 * replace, fail, remove, resync, check). The sweep is driven from above
 * (stack/top-down.ts). The NBD server only sees `device`.
 */
export class MirrorController {
  private readonly rebuilds: Rebuilds;
  private stopping = false;
  /** Fault wrappers by slot, so tests and the crash toolkit can trigger and heal them. */
  readonly faults: Array<FaultDevice | undefined> = [];
  /** The fault wrapper under the region log, if configured. */
  logFault: FaultDevice | undefined;
  /** Thin pools by slot (for pool grow and status); undefined for plain legs. */
  readonly pools: Array<ThinLeg | undefined> = [];
  /** The config names leg paths; replace tells the owner so it can record the new one. */
  onLegPathChanged: ((slot: number, path: string) => string | undefined) | undefined;
  private lastCheck: LastCheck | undefined;
  private readonly events: EventSink;
  private readonly reconnector: RemoteReconnector;

  private constructor(
    readonly device: MirrorDevice,
    readonly resync: ResyncEngine,
    private readonly settings: MirrorSettings,
    private readonly logger: Logger,
    /** Regions found out of sync at start (what recovery had to resync). */
    readonly recoveryRegions: number,
  ) {
    this.events = settings.events ?? noEvents;
    this.rebuilds = new Rebuilds(device, resync, settings.legs, logger, this.events, () => this.stopping);
    this.reconnector = new RemoteReconnector({ legState: (slot) => device.legState(slot),
      legHeld: (slot) => device.log.state.legs[slot].heldByOperator, reAdd: (slot) => this.reAdd(slot) },
    logger, this.events, settings.reconnect);
  }

  /**
   * A remote leg's connection that ends while nothing is in flight (the
   * remote killed or its host gone while the mirror is idle; a silent link
   * caught by the idle probe) fails the leg at once, durably, as a request
   * failing on it would, so status, metrics and the reconnector see it
   * before any write could be answered without it.
   */
  private failWhenLost(slot: number, leg: MirrorLeg): void {
    leg.remote?.onLost((reason) => {
      // Only the leg still in use in that slot: a replaced or re-added device's late loss is no news.
      if (this.stopping || this.device.generation.legs[slot] !== leg) return;
      void this.device.failLeg(leg, new BlockError('EIO', `leg${slot}: ${leg.path}: the connection was lost: ${reason}`));
    });
  }

  /** A remote leg that failed or was unreachable is brought back when it answers again (remote-legs.ts). */
  watchRemote(slot: number): void {
    const spec = this.settings.legs[slot];
    if (spec?.remote && !this.stopping) this.reconnector.watch(slot, spec.path);
  }

  /** Assembles the mirror from its log and legs (mirror/assemble.ts), then starts what recovery and rebuilds need. */
  static async open(settings: MirrorSettings, logger: Logger): Promise<MirrorController> {
    // The device reports a failed leg as an event; a remote one is then watched for its return.
    let legFaulted: ((slot: number) => void) | undefined;
    const events = settings.events ?? noEvents;
    const watched: EventSink = (event) => {
      events(event);
      if (event.event === 'leg-faulty') legFaulted?.(event.slot);
    };
    const assembled = await assembleMirror({ ...settings, events: watched }, logger);
    const controller = new MirrorController(assembled.device, assembled.resync, settings, logger, assembled.recoveryRegions);
    legFaulted = (slot) => controller.watchRemote(slot);
    // Faulty in the log, whether it went missing at this start or before the last stop (a cut link, a crash, both
    // ends stopped at once): a remote leg comes back by itself unless the operator holds it.
    assembled.device.log.state.legs.forEach((record, slot) => {
      if (record.state === 'faulty') controller.watchRemote(slot);
    });
    assembled.device.generation.legs.forEach((leg, slot) => {
      if (leg) controller.failWhenLost(slot, leg);
    });
    controller.faults.push(...assembled.opened.map((leg) => leg?.fault));
    controller.pools.push(...assembled.opened.map((leg) => leg?.thin));
    controller.logFault = assembled.logFault;
    assembled.resync.onCaughtUp = () => controller.rebuilds.promoteBitmapRebuilds();
    assembled.resync.kick();
    if (assembled.recoveryRegions === 0) await controller.rebuilds.promoteBitmapRebuilds();
    for (const slot of assembled.fullRebuilds) controller.rebuilds.startFull(slot);
    return controller;
  }

  /** Brings a faulty leg back: only regions written while it was away (set bits) are copied. */
  async reAdd(slot: number, options: { path?: string; force?: boolean } = {}): Promise<string> {
    const { log } = this.device;
    const record = this.recordAt(slot);
    if (record.state !== 'faulty') throw new MirrorSetupError(`leg ${slot} is ${record.state}; only a faulty leg can be re-added`);
    const slotSpec = this.settings.legs[slot];
    const spec: LegSpec = options.path === undefined || options.path === slotSpec.path ? slotSpec
      : isNbdUri(options.path) ? remoteLegSpec(options.path, slotSpec) : { ...slotSpec, path: options.path, remote: undefined };
    const { path } = spec;
    this.refuseOwnFile(slot, path, true);
    // The failed leg's own device may still be closing; its claim on a block device must go first.
    await this.device.detachedLegsClosed();
    const lock = spec.remote ? undefined : lockIfExists(path, 'leg');
    let mode: 'bitmap' | 'full' = 'bitmap';
    let opened: OpenedLeg;
    try {
      const verdict = await checkLeg(spec, slot, { ...log.state, legs: log.state.legs.map((entry, index) =>
        (index === slot ? { ...entry, state: 'rebuilding' } : entry)) });
      if (verdict.kind === 'missing') throw new LegUnreachableError(verdict.problem);
      if (verdict.kind === 'ok' && verdict.grown) takeGrownLeg(path, slot, verdict.grown, this.logger);
      if (verdict.kind === 'refused') {
        if (!options.force) {
          throw new MirrorSetupError(`${verdict.problem}. ${verdict.hint ?? 'Use --force to rebuild it fully instead (whatever it holds now is overwritten)'}`);
        }
        await stampLeg(spec, log.state, slot, 0n);
        mode = 'full';
      }
      opened = await openLeg(spec, log.state.deviceSizeBytes, this.logger, { name: `leg${slot}`, events: this.events,
        powerCuts: log.crashPoints.powerCuts });
    } finally {
      lock?.release();
    }
    applyLegEvent(record, mode === 'full' ? 'forced' : 're_added');
    this.reconnector.released(slot);
    await this.attach(slot, spec, opened);
    if (mode === 'full') {
      this.events({ event: 'leg-rebuilding', slot, path, mode });
      this.rebuilds.startFull(slot);
      return `leg ${slot} (${path}) is being rebuilt fully`;
    }
    const regions = log.dirtyRegions();
    for (const region of regions) this.device.regions.markOutOfSync(region);
    this.logger.info({ slot, path, regions: regions.length }, 're-add: resyncing regions written while the leg was away');
    this.events({ event: 'leg-rebuilding', slot, path, mode, regions: regions.length });
    if (regions.length === 0) await this.rebuilds.promoteBitmapRebuilds();
    else this.resync.kick('re-add');
    return `leg ${slot} (${path}) re-added; ${plural(regions.length, 'region')} to resync`;
  }

  /** Puts a new, empty leg in a slot and rebuilds it fully, online. */
  async replace(slot: number, path: string, options: { force?: boolean } = {}): Promise<string> {
    const { log } = this.device;
    const record = this.recordAt(slot);
    if (record.state === 'in_sync' && this.device.generation.readable.length < 2) {
      throw new MirrorSetupError(`leg ${slot} is the last in-sync leg; it cannot be replaced`);
    }
    if (this.rebuilds.running) throw new MirrorSetupError('a rebuild is already running; wait for it to finish');
    const remote = isNbdUri(path);
    if (!remote && fs.existsSync(path) && !options.force) {
      throw new MirrorSetupError(`${path} exists; refusing to overwrite it (use --force)`);
    }
    this.refuseOwnFile(slot, path, false);
    const legUuid = randomBytes(16);
    // The new leg is of the slot's kind (a thin slot gets a new pool of the configured size), and keeps
    // the crash-toolkit devices configured for the slot. A URI makes it a remote leg: replace is how a
    // replica on another host is seeded.
    const spec: LegSpec = remote ? remoteLegSpec(path, this.settings.legs[slot]) : { ...this.settings.legs[slot], path, remote: undefined };
    await this.device.detachedLegsClosed();
    const lock = remote ? undefined : lockIfExists(path, 'leg');
    let opened: OpenedLeg;
    try {
      try {
        await prepareLeg(spec, log.state.deviceSizeBytes, { mirrorUuid: log.state.mirrorUuid, legUuid, slot,
          dataSizeBytes: log.state.deviceSizeBytes, events: 0n }, { overwrite: options.force });
      } catch (error) {
        throw error instanceof MirrorSetupError ? error : new MirrorSetupError((error as Error).message);
      }
      opened = await openLeg(spec, log.state.deviceSizeBytes, this.logger, { name: `leg${slot}`, events: this.events,
        powerCuts: log.crashPoints.powerCuts });
    } finally {
      lock?.release();
    }
    applyLegEvent(record, 'replaced');
    this.reconnector.released(slot);
    // A new leg: its identity, and no label events of this mirror yet.
    record.uuid = legUuid;
    record.events = 0n;
    this.settings.legs[slot] = spec;
    await this.attach(slot, spec, opened);
    const note = this.onLegPathChanged?.(slot, path);
    this.events({ event: 'leg-rebuilding', slot, path, mode: 'full' });
    this.rebuilds.startFull(slot);
    return `leg ${slot} replaced by ${path}; full rebuild started${note ? `; ${note}` : ''}`;
  }

  private async attach(slot: number, spec: LegSpec, opened: OpenedLeg): Promise<void> {
    try {
      await this.device.log.commit();
    } catch (error) {
      await opened.device.close();
      throw error;
    }
    this.faults[slot] = opened.fault;
    this.pools[slot] = opened.thin;
    const legs = [...this.device.generation.legs];
    const leg = mirrorLeg(slot, spec, opened);
    legs[slot] = leg;
    this.device.replaceGeneration(legs);
    this.failWhenLost(slot, leg);
  }

  /**
   * One process shares a lock among its own opens of a file, so the lock
   * cannot stop `replace 1 <leg 0's file>`, which would overwrite leg 0, or
   * a re-add naming the log. Refused here, by device and inode, so a second
   * path to the file counts. `sameSlotAllowed`: re-add takes the slot's own
   * file back by design.
   */
  private refuseOwnFile(slot: number, path: string, sameSlotAllowed: boolean): void {
    const identity = fileIdentity(path);
    if (identity === undefined) return;
    if (identity === fileIdentity(this.device.log.path)) throw new MirrorSetupError(`${path} is this mirror's region log`);
    this.settings.legs.forEach((leg, other) => {
      if (identity !== fileIdentity(leg.path)) return;
      if (other !== slot) throw new MirrorSetupError(`${path} is leg ${other} of this mirror`);
      // A leg still in use must not have its file recreated under the requests that read and write it.
      if (!sameSlotAllowed && this.device.legState(slot) !== 'faulty' && this.device.legState(slot) !== 'empty') {
        throw new MirrorSetupError(`${path} is the file leg ${slot} is using now; replace takes a new file`);
      }
    });
  }

  private recordAt(slot: number): LegRecord {
    const record = this.device.log.state.legs[slot];
    if (!Number.isInteger(slot) || record === undefined) {
      throw new MirrorSetupError(`no leg slot ${slot} (the mirror has slots 0..${this.device.log.state.legs.length - 1})`);
    }
    return record;
  }

  /** Raises a thin leg's pool capacity online (to `toBytes`, or by `byBytes`). */
  async growPool(slot: number, size: PoolGrowth): Promise<PoolUsage> {
    this.recordAt(slot);
    const pool = this.pools[slot];
    if (!pool) throw new MirrorSetupError(`leg ${slot} is not a thin leg (or is not attached); only thin pools grow`);
    const usage = await pool.grow(size);
    this.logger.info({ slot, path: pool.path, capacityBytes: usage.capacityBytes, freeBytes: usage.freeBytes }, 'thin pool grown');
    // A resync stopped by ENOSPC waits for its retry timer; the space it waited for is here now.
    if (this.device.regions.outOfSyncRegions > 0) this.resync.kick();
    return usage;
  }

  /**
   * Resyncs every region from the source leg, like md's "resync". Resolves
   * once the bits are durable and the pass is asked for, so a waitForSync()
   * that follows finds it.
   */
  async fullResync(): Promise<string> {
    for (let region = 0; region < this.device.regions.regionCount; region += 1) this.device.regions.markOutOfSync(region);
    await this.device.log.commit();
    this.resync.kick('resync');
    return `all ${plural(this.device.regions.regionCount, 'region')} marked for resync`;
  }

  /** Nothing to copy: no region out of sync, no leg being rebuilt, no pass running. */
  get inSync(): boolean {
    return this.device.regions.outOfSyncRegions === 0 && this.rebuilds.running === undefined && !this.resync.busy &&
      !this.device.log.state.legs.some((record) => record.state === 'rebuilding');
  }

  /**
   * Waits until every resync, re-add and rebuild asked for so far has finished,
   * reporting progress as it goes. Stops early, with the reason, when a pass
   * ends in an error (it is retried in the background), when nothing is left
   * that could finish the work, when the mirror fails or the server stops.
   */
  async waitForSync(onProgress?: (progress: ResyncProgress) => void): Promise<{ finished: boolean; problem?: string }> {
    const pollMs = 50;
    const stallMs = 5000;
    let lastReportMs = 0;
    let idleSinceMs: number | undefined;
    while (!this.inSync) {
      if (this.stopping) return { finished: false, problem: 'the server is shutting down; the resync goes on at the next start' };
      if (this.device.failed) return { finished: false, problem: `the mirror has failed: ${this.device.failed.message}` };
      const working = this.resync.busy || this.rebuilds.running !== undefined;
      if (!working && this.resync.progress.lastError) {
        return { finished: false, problem: `the resync was interrupted (${this.resync.progress.lastError}); it is retried in the background` };
      }
      if (!working && this.device.regions.outOfSyncRegions > 0) this.resync.kick();
      if (working) idleSinceMs = undefined;
      else if ((idleSinceMs ??= Date.now()) + stallMs < Date.now()) {
        return { finished: false, problem: 'a leg is marked rebuilding but nothing is copying to it; re-add or replace it' };
      }
      const now = Date.now();
      if (onProgress && now - lastReportMs >= 250) {
        lastReportMs = now;
        onProgress({ ...this.resync.progress });
      }
      await new Promise((resolve) => setTimeout(resolve, pollMs));
    }
    onProgress?.({ ...this.resync.progress });
    return { finished: true };
  }

  /** Changes the resync bandwidth limit of this run (storage.resyncRate stays the next start's). */
  setResyncRate(bytesPerSecond: number): string {
    this.resync.setRate(bytesPerSecond);
    this.logger.info({ bytesPerSecond }, 'resync rate changed');
    return bytesPerSecond > 0 ? `resync rate limited to ${bytesPerSecond} bytes per second` : 'resync rate unlimited';
  }

  /**
   * Marks a leg faulty, as mdadm --fail does: it gets no more I/O and its
   * regions written from now on stay dirty for a later re-add. The last in-sync
   * leg is refused (md, too, keeps a RAID1's last working device).
   */
  async fail(slot: number): Promise<string> {
    const record = this.recordAt(slot);
    if (record.state === 'faulty' && this.settings.legs[slot].remote && !record.heldByOperator) {
      // Away and being reconnected: the operator wants it to stay out (a replica taken down for work).
      applyLegEvent(record, 'held');
      this.reconnector.heldByOperator(slot);
      await this.device.log.commit();
      return `leg ${slot} (${this.settings.legs[slot].path}) was already faulty; it is now held: not reconnected until re-add, replace or remove`;
    }
    if (record.state === 'faulty' || record.state === 'empty') {
      throw new MirrorSetupError(`leg ${slot} is already ${record.state}${record.heldByOperator ? ' and held' : ''}`);
    }
    const leg = this.device.generation.legs[slot];
    if (record.state === 'in_sync' && this.device.generation.readable.length < 2) {
      throw new MirrorSetupError(`leg ${slot} is the last in-sync leg; failing it would stop the mirror`);
    }
    if (!leg) throw new MirrorSetupError(`leg ${slot} has no device attached`);
    if (this.rebuilds.running && record.state === 'rebuilding') {
      this.logger.warn({ slot }, 'failing a leg being rebuilt: the rebuild stops');
    }
    this.reconnector.heldByOperator(slot);
    await this.device.failLeg(leg, new BlockError('EIO', 'failed by the operator (nbd-mirror fail)'), 'operator_failed');
    return `leg ${slot} (${leg.path}) marked faulty; re-add it, or remove and replace it`;
  }

  /**
   * Empties a faulty slot, as mdadm --remove does: the leg is forgotten (a later
   * re-add is refused), and `replace` puts a new leg in the slot.
   */
  async remove(slot: number): Promise<string> {
    const record = this.recordAt(slot);
    if (record.state !== 'faulty') {
      throw new MirrorSetupError(`leg ${slot} is ${record.state}; only a faulty leg can be removed (nbd-mirror fail ${slot} first)`);
    }
    const path = this.settings.legs[slot].path;
    applyLegEvent(record, 'removed');
    this.reconnector.released(slot);
    await this.device.log.commit();
    this.faults[slot] = undefined;
    this.pools[slot] = undefined;
    this.events({ event: 'leg-removed', slot, path });
    return `leg ${slot} (${path}) removed; nbd-mirror replace ${slot} NEW-LEG puts a new leg in the slot`;
  }

  /** Compares the in-sync legs region by region (md "check"); with repair, mismatched regions are resynced. */
  async check(options: { repair?: boolean; onProgress?: (done: number, total: number) => void } = {}): Promise<CompareResult> {
    const generation = this.device.enter();
    let result: CompareResult;
    try {
      const { regions } = this.device;
      result = await compareRegions({
        sizeBytes: this.device.sizeBytes,
        regionSizeBytes: regions.regionSizeBytes,
        legs: generation.readable,
        lock: (region) => regions.lock(region),
        unlock: (region) => regions.unlock(region),
      }, options.onProgress);
    } finally {
      this.device.exit(generation);
    }
    const repair = options.repair === true;
    const compared = result.legsCompared.length >= 2;
    this.lastCheck = { finishedAt: new Date().toISOString(), compared, mismatches: result.mismatchedRegions.length,
      regionsCompared: result.regionsCompared, legsCompared: result.legsCompared, repair };
    this.events({ event: 'check-finished', mismatches: result.mismatchedRegions.length, regionsCompared: result.regionsCompared,
      legsCompared: result.legsCompared, repair, compared });
    if (repair && result.mismatchedRegions.length > 0) {
      for (const region of result.mismatchedRegions) this.device.regions.markOutOfSync(region);
      await this.device.log.commit();
      this.resync.kick('repair');
    }
    return result;
  }

  /** A remote leg's link as the reconnector sees it, and the connections its open device holds. */
  private remoteStatus(slot: number, faulty: boolean): RemoteLegStatus {
    const open = this.device.generation.legs[slot]?.remote;
    return { ...this.reconnector.linkStatus(slot, faulty), connections: open?.connectionCount ?? 0, connectionsNote: open?.connectionsNote ?? null };
  }

  status(): MirrorStatus {
    const { log } = this.device;
    const counts = this.device.regions.counts();
    const failure = this.device.failed?.message;
    const degraded = !this.device.fullyInSync;
    return {
      mirrorUuid: formatUuid(log.state.mirrorUuid),
      sizeBytes: log.state.deviceSizeBytes,
      regionSizeBytes: log.state.regionSizeBytes,
      regionCount: log.state.regionCount,
      health: failure ? 'failed' : degraded ? 'degraded' : counts.outOfSync > 0 ? 'resyncing' : 'optimal',
      failure,
      legs: log.state.legs.map((record, slot) => ({
        slot,
        path: this.settings.legs[slot].path,
        uuid: formatUuid(record.uuid),
        state: record.state,
        rebuildMode: record.rebuildMode,
        failedAt: record.failedAtMs ? new Date(record.failedAtMs).toISOString() : undefined,
        pool: this.pools[slot]?.usage(),
        remote: this.settings.legs[slot].remote ? this.remoteStatus(slot, record.state === 'faulty') : undefined,
      })),
      regions: counts,
      resync: { ...this.resync.progress, bytesPerSecondLimit: this.resync.bytesPerSecond },
      lastCheck: this.lastCheck,
      sweeps: this.device.stats.sweeps,
      regionsCleared: this.device.stats.regionsCleared,
      logCommits: log.commitsRun,
      generation: this.device.generation.number,
    };
  }

  /**
   * Stops background work, flushes, clears what may be cleared and marks the
   * log clean. `upperFlushed: false` (a cache above could not write back)
   * keeps the log unclean.
   */
  async shutdown(options: { upperFlushed?: boolean } = {}): Promise<void> {
    this.stopping = true;
    this.reconnector.stop();
    await this.resync.stop();
    await this.rebuilds.running;
    await this.device.shutdown(options.upperFlushed ?? true);
  }

  async close(): Promise<void> {
    await this.device.close();
  }
}


/** "1 region", "2 regions". */
export function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}
