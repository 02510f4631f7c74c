import { errorAction } from '../blockdev/error-policy.js';
import type { Logger } from 'pino';
import { BlockError, toBlockError } from '../blockdev/errors.js';
import type { MirrorLeg } from './generation.js';
import type { MirrorDevice } from './mirror-device.js';
import { type EventSink, noEvents } from '../blockdev/events.js';

/**
 * What a pass is for, as status and events show it: recovery after an unclean
 * stop, re-add (regions written while a leg was away), resync (the operator
 * asked for every region), repair (regions a check found different), rebuild
 * (a whole new leg).
 */
export type ResyncKind = 'recovery' | 're-add' | 'resync' | 'repair' | 'rebuild';

export interface ResyncProgress {
  /** The running pass's kind, or the last one's once it finished ('none' before the first). */
  kind: ResyncKind | 'none';
  running: boolean;
  regionsDone: number;
  regionsTotal: number;
  bytesCopied: number;
  bytesZeroed: number;
  startedAtMs: number;
  finishedAtMs: number;
  lastError?: string;
}

const copyChunkBytes = 1 << 20;
const retryDelayMs = 1000;
/** How often a running pass reports progress as an event. */
const progressEventIntervalMs = 1000;

/**
 * Copies regions from the source leg to the other writable legs while the
 * mirror serves I/O. Each region is copied under its region lock, so an
 * application write to it either finishes before the copy reads or starts
 * after the copy wrote: a copy can never overwrite newer data (the GlusterFS
 * rebalance race).
 */
export class ResyncEngine {
  progress: ResyncProgress = {
    kind: 'none', running: false, regionsDone: 0, regionsTotal: 0, bytesCopied: 0, bytesZeroed: 0, startedAtMs: 0, finishedAtMs: 0,
  };
  private readonly buffer: Buffer;
  private running: Promise<void> | undefined;
  private stopped = false;
  private wakeTimer: NodeJS.Timeout | undefined;
  /** Called when a pass over out-of-sync regions finishes with none left. */
  onCaughtUp: (() => Promise<void>) | undefined;
  /** The kind the next pass reports (set by whoever asked for it). */
  private pendingKind: ResyncKind | undefined;
  private lastProgressEventMs = 0;
  private readonly events: EventSink;

  constructor(private readonly mirror: MirrorDevice, private readonly options: { bytesPerSecond: number; logger: Logger; events?: EventSink }) {
    this.buffer = Buffer.alloc(Math.min(copyChunkBytes, mirror.regions.regionSizeBytes));
    this.events = options.events ?? noEvents;
    mirror.onOutOfSync = () => this.kick();
  }

  /** Changes the bandwidth limit at run time (0: unlimited); the running pass follows from its next region. */
  setRate(bytesPerSecond: number): void {
    this.options.bytesPerSecond = bytesPerSecond;
  }

  get bytesPerSecond(): number {
    return this.options.bytesPerSecond;
  }

  get busy(): boolean {
    return this.running !== undefined;
  }

  /** Starts a pass over the out-of-sync regions unless one is running. */
  kick(kind?: ResyncKind): void {
    if (kind) this.pendingKind = kind;
    if (this.running || this.stopped || this.mirror.regions.outOfSyncRegions === 0) return;
    this.running = this.runPass().finally(() => { this.running = undefined; });
  }

  /** Resolves when no pass is running (a finished pass may have scheduled a retry). */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.wakeTimer);
    await this.idle();
  }

  private begin(kind: ResyncKind, total: number, done = 0): void {
    this.progress = {
      kind, running: true, regionsDone: done, regionsTotal: total, bytesCopied: 0, bytesZeroed: 0, startedAtMs: Date.now(), finishedAtMs: 0,
    };
    this.lastProgressEventMs = this.progress.startedAtMs;
    this.events({ event: 'resync-started', kind, regionsTotal: total });
  }

  private advanced(): void {
    const now = Date.now();
    if (now - this.lastProgressEventMs < progressEventIntervalMs) return;
    this.lastProgressEventMs = now;
    const { kind, regionsDone, regionsTotal, bytesCopied } = this.progress;
    this.events({ event: 'resync-progress', kind, regionsDone, regionsTotal, bytesCopied });
  }

  private finish(error?: string): void {
    this.progress.running = false;
    this.progress.finishedAtMs = Date.now();
    if (error) this.progress.lastError = error;
    else delete this.progress.lastError;
    const { kind, regionsDone, regionsTotal, bytesCopied, startedAtMs, finishedAtMs } = this.progress;
    this.events({ event: 'resync-finished', kind, regionsDone, regionsTotal, bytesCopied, ms: finishedAtMs - startedAtMs, error });
  }

  private async runPass(): Promise<void> {
    const regions = this.mirror.regions.outOfSyncList();
    const kind = this.pendingKind ?? 'recovery';
    this.pendingKind = undefined;
    this.begin(kind, regions.length);
    this.options.logger.info({ regions: regions.length }, 'resync started');
    try {
      for (const region of regions) {
        if (this.stopped) break;
        if (!this.mirror.regions.isOutOfSync(region)) {
          this.progress.regionsDone += 1;
          continue;
        }
        await this.copyRegion(region, () => true, () => this.mirror.regions.markInSync(region));
        this.progress.regionsDone += 1;
        this.advanced();
        if (this.progress.regionsDone % 64 === 0) {
          this.options.logger.debug({ done: this.progress.regionsDone, total: regions.length }, 'resync progress');
        }
      }
      this.finish();
      this.options.logger.info({ regions: this.progress.regionsDone, bytesCopied: this.progress.bytesCopied,
        bytesZeroed: this.progress.bytesZeroed, ms: this.progress.finishedAtMs - this.progress.startedAtMs }, 'resync finished');
    } catch (error) {
      const message = (error as Error).message;
      // The retry continues the same pass, so it keeps its kind.
      this.pendingKind ??= kind;
      this.finish(message);
      this.options.logger.warn({ err: message }, 'resync interrupted; retrying shortly');
    }
    if (this.stopped) return;
    if (this.mirror.regions.outOfSyncRegions > 0) {
      // More regions went out of sync meanwhile, or a retryable error stopped us.
      clearTimeout(this.wakeTimer);
      this.wakeTimer = setTimeout(() => this.kick(), this.progress.lastError ? retryDelayMs : 0);
      this.wakeTimer.unref();
    } else if (this.onCaughtUp) {
      await this.onCaughtUp();
    }
  }

  /**
   * Copies every region from the source to one leg being rebuilt, starting at
   * a region; `checkpoint` is called every few regions (after the target was
   * flushed) so a crash resumes rather than restarts.
   */
  async rebuild(target: MirrorLeg, fromRegion: number, checkpoint: (nextRegion: number) => Promise<void>): Promise<void> {
    const { regionCount } = this.mirror.regions;
    this.begin('rebuild', regionCount, fromRegion);
    const checkpointEvery = Math.max(1, Math.floor((64 << 20) / this.mirror.regions.regionSizeBytes));
    try {
      for (let region = fromRegion; region < regionCount; region += 1) {
        if (this.stopped) throw new BlockError('ESHUTDOWN', 'rebuild stopped by shutdown');
        await this.copyRegion(region, (leg) => leg === target, () => {});
        this.progress.regionsDone = region + 1;
        this.advanced();
        if ((region + 1) % checkpointEvery === 0 || region + 1 === regionCount) {
          await target.device.flush();
          await checkpoint(region + 1);
        }
      }
      this.finish();
    } catch (error) {
      this.finish((error as Error).message);
      throw error;
    }
  }

  private async copyRegion(region: number, includeTarget: (leg: MirrorLeg) => boolean, done: () => void): Promise<void> {
    const { regions } = this.mirror;
    await regions.lock(region);
    const generation = this.mirror.enter();
    try {
      const source = generation.source;
      if (!source) throw new BlockError('EIO', 'no in-sync leg to copy from');
      const targets = generation.writable.filter((leg) => leg !== source && includeTarget(leg));
      const startBytes = region * regions.regionSizeBytes;
      const lengthBytes = Math.min(regions.regionSizeBytes, this.mirror.sizeBytes - startBytes);
      if (targets.length > 0) await this.copyRange(source, targets, startBytes, lengthBytes);
      done();
    } finally {
      this.mirror.exit(generation);
      regions.unlock(region);
    }
    await this.throttle();
  }

  private async copyRange(source: MirrorLeg, targets: MirrorLeg[], startBytes: number, lengthBytes: number): Promise<void> {
    const extents = source.device.capabilities.blockStatus
      ? await this.onLeg(source, () => source.device.blockStatus(startBytes, lengthBytes))
      : [{ offsetBytes: startBytes, lengthBytes, hole: false, zero: false }];
    let covered = startBytes;
    for (const extent of extents) {
      const end = Math.min(extent.offsetBytes + extent.lengthBytes, startBytes + lengthBytes);
      if (extent.zero) {
        await Promise.all(targets.map((leg) => this.onLeg(leg, () =>
          leg.device.writeZeroes(covered, end - covered, { fua: false, noHole: false, fast: false }))));
        this.progress.bytesZeroed += end - covered;
      } else {
        for (let at = covered; at < end; at += this.buffer.length) {
          const chunk = this.buffer.subarray(0, Math.min(this.buffer.length, end - at));
          await this.onLeg(source, () => source.device.read(at, chunk));
          this.mirror.legIo.readBytes[source.slot] += chunk.length;
          if (this.mirror.crashPoints.armed) await this.mirror.crashPoints.reach('resync.between-read-and-write');
          await Promise.all(targets.map((leg) => this.onLeg(leg, () => leg.device.write(at, chunk, { fua: false }))));
          for (const leg of targets) this.mirror.legIo.writtenBytes[leg.slot] += chunk.length;
          this.progress.bytesCopied += chunk.length;
        }
      }
      covered = end;
      if (covered >= startBytes + lengthBytes) break;
    }
  }

  /** Runs one leg operation; a fatal error fails that leg before the copy gives up on this region. */
  private async onLeg<T>(leg: MirrorLeg, operation: () => Promise<T>): Promise<T> {
    try {
      return await operation();
    } catch (error) {
      const failure = toBlockError(error, `resync on leg ${leg.slot}`);
      if (errorAction('resync-leg', failure) === 'fail-leg') await this.mirror.failLeg(leg, failure);
      throw failure;
    }
  }

  private async throttle(): Promise<void> {
    const { bytesPerSecond } = this.options;
    if (!(bytesPerSecond > 0)) return;
    const aheadMs = (this.progress.bytesCopied / bytesPerSecond) * 1000 - (Date.now() - this.progress.startedAtMs);
    if (aheadMs > 1) await new Promise((resolve) => setTimeout(resolve, Math.min(aheadMs, 1000)));
  }
}
