import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { BlockError } from '../blockdev/errors.js';
import { type EventSink, noEvents } from '../blockdev/events.js';
import type { CrashPoints } from '../faults/crash-points.js';
import {
  bitmapBytesFor, type CheckpointFileState, type CheckpointRecord, CheckpointFormatError, checkpointNameProblem, checkpointsMax, decodeCheckpointFile,
  encodeCheckpointFile, granulesFor,
} from './format.js';

/** Runs of granules of one state over [offset, offset + length) of `bitmap` (only the first with `one`). */
export function runsOf(bitmap: Uint8Array, granularity: number, offsetBytes: number, lengthBytes: number, one: boolean): DirtyRun[] {
  const end = offsetBytes + lengthBytes;
  const runs: DirtyRun[] = [];
  let at = offsetBytes;
  while (at < end) {
    const granule = Math.floor(at / granularity);
    const dirty = (bitmap[granule >> 3] & (1 << (granule & 7))) !== 0;
    let next = Math.min(end, (granule + 1) * granularity);
    while (next < end) {
      const following = Math.floor(next / granularity);
      if (((bitmap[following >> 3] & (1 << (following & 7))) !== 0) !== dirty) break;
      next = Math.min(end, (following + 1) * granularity);
    }
    runs.push({ lengthBytes: next - at, dirty });
    at = next;
    if (one) break;
  }
  return runs;
}

/** Set bits in each byte value. */
const bitsIn = Uint8Array.from({ length: 256 }, (_, value) => {
  let count = 0;
  for (let bits = value; bits !== 0; bits &= bits - 1) count += 1;
  return count;
});

/** Beside the region log, as the log's companion: `mirror.log.checkpoints`. */
export function checkpointFilePath(logPath: string): string {
  return `${logPath}.checkpoints`;
}

export class CheckpointError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CheckpointError';
  }
}

export interface CheckpointInfo {
  name: string;
  createdAt: string;
  /** Bytes in granules marked changed since the checkpoint (whole granules; the last may be short). */
  dirtyBytes: number;
  granularityBytes: number;
}

/** A run of granules of one state, for NBD block status. */
export interface DirtyRun {
  lengthBytes: number;
  dirty: boolean;
}

export interface CheckpointStoreOptions {
  mirrorUuid: Buffer;
  deviceSizeBytes: number;
  granularityBytes: number;
  regionSizeBytes: number;
  /**
   * Regions whose region-log bit is set now. After a crash, a write may have
   * reached the legs while its mark was only in memory; its region's bit was
   * durable first and is cleared only after the marks are persisted, so
   * marking every granule of these regions leaves no change unreported.
   */
  regionsWithBitsSet: number[];
  /** Where created and removed checkpoints are reported. */
  events?: EventSink;
  /** The server's crash points (checkpoint.before-rename, checkpoint.after-rename). */
  crashPoints?: CrashPoints;
}

/**
 * Changed-block tracking for checkpoints (incremental backup). Each
 * checkpoint has a bitmap of granules written, trimmed or zeroed since it was
 * created. Marks are made in memory by the tracking device above the cache
 * (cbt/tracking-device.ts) and persisted here, in one file written whole and
 * renamed into place. Crash safety rides on the region log: the mirror's
 * sweeper persists the marks before it clears any bit (persistBeforeClearing),
 * so after a crash every change the file misses lies in a region whose bit is
 * still set, and open() marks those regions whole.
 */
export class CheckpointStore {
  private state: CheckpointFileState;
  /** Marks made since the last persist began: a persist with nothing new is skipped. */
  private changedSincePersist = false;
  private persisting: Promise<void> = Promise.resolve();
  /** list()'s answer and the state it was counted from (a mark forgets it; a new state object replaces it). */
  private listed: { state: CheckpointFileState; infos: CheckpointInfo[] } | undefined;
  /** Checkpoints being removed: left out of the file being written, still marked until the removal is durable. */
  private readonly leaving = new Set<CheckpointRecord>();

  private constructor(readonly path: string, state: CheckpointFileState, private readonly events: EventSink,
    private readonly crashPoints: CrashPoints | undefined) {
    this.state = state;
  }

  /** Reads the file (none yet: no checkpoints), refuses another mirror's, and widens by the regions whose bits are set. */
  static open(file: string, options: CheckpointStoreOptions): CheckpointStore {
    let state: CheckpointFileState;
    if (!fs.existsSync(file)) {
      state = { mirrorUuid: options.mirrorUuid, fileUuid: randomBytes(16), sequence: 0n, granularityBytes: options.granularityBytes,
        deviceSizeBytes: options.deviceSizeBytes, checkpoints: [] };
    } else {
      try {
        state = decodeCheckpointFile(fs.readFileSync(file));
      } catch (error) {
        const reason = error instanceof CheckpointFormatError ? error.message : (error as Error).message;
        throw new CheckpointError(`checkpoint file ${file} is unreadable: ${reason}. Its checkpoints cannot be trusted; move the file ` +
          'away to start without checkpoints (the next backup must then be full)');
      }
      if (!state.mirrorUuid.equals(options.mirrorUuid)) {
        throw new CheckpointError(`checkpoint file ${file} belongs to another mirror; move it away or name this mirror's file`);
      }
      if (state.deviceSizeBytes !== options.deviceSizeBytes) {
        throw new CheckpointError(`checkpoint file ${file} tracks a ${state.deviceSizeBytes}-byte device, this mirror is ${options.deviceSizeBytes}`);
      }
      // The granule is fixed while checkpoints exist (their bitmaps are in it); with none, the configured one applies.
      if (state.checkpoints.length === 0) state = { ...state, granularityBytes: options.granularityBytes };
    }
    const store = new CheckpointStore(file, state, options.events ?? noEvents, options.crashPoints);
    for (const region of options.regionsWithBitsSet) {
      store.mark(region * options.regionSizeBytes, Math.min(options.regionSizeBytes, options.deviceSizeBytes - region * options.regionSizeBytes));
    }
    return store;
  }

  /** Whether any checkpoint exists: with none, the tracking device passes every request straight through. */
  get active(): boolean {
    return this.state.checkpoints.length > 0;
  }

  get granularityBytes(): number {
    return this.state.granularityBytes;
  }

  names(): string[] {
    return this.state.checkpoints.map((checkpoint) => checkpoint.name);
  }

  /** Marks the granules a write, trim or zeroing of [offset, offset + length) touches, in every checkpoint. */
  mark(offsetBytes: number, lengthBytes: number): void {
    const { checkpoints } = this.state;
    if (checkpoints.length === 0 || lengthBytes <= 0) return;
    const first = Math.floor(offsetBytes / this.state.granularityBytes);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / this.state.granularityBytes);
    for (const checkpoint of checkpoints) {
      const { bitmap } = checkpoint;
      for (let granule = first; granule <= last; granule += 1) bitmap[granule >> 3] |= 1 << (granule & 7);
    }
    this.changedSincePersist = true;
    this.listed = undefined;
  }

  /**
   * The checkpoints with the bytes changed since each. Kept until the next
   * mark or change of checkpoints: status and every gauge of a metrics scrape
   * ask for it, and counting a TiB's bitmaps takes milliseconds.
   */
  list(): CheckpointInfo[] {
    if (this.listed?.state !== this.state) this.listed = { state: this.state, infos: this.count() };
    return this.listed.infos;
  }

  private count(): CheckpointInfo[] {
    const { granularityBytes, deviceSizeBytes } = this.state;
    const lastGranule = granulesFor(deviceSizeBytes, granularityBytes) - 1;
    // The last granule may be short: counted whole by the popcount, then corrected.
    const shortBy = (lastGranule + 1) * granularityBytes - deviceSizeBytes;
    return this.state.checkpoints.map((checkpoint) => {
      let granules = 0;
      for (const byte of checkpoint.bitmap) if (byte !== 0) granules += bitsIn[byte];
      const lastDirty = (checkpoint.bitmap[lastGranule >> 3] & (1 << (lastGranule & 7))) !== 0;
      return { name: checkpoint.name, createdAt: new Date(checkpoint.createdAtMs).toISOString(),
        dirtyBytes: granules * granularityBytes - (lastDirty ? shortBy : 0), granularityBytes };
    });
  }

  /**
   * Creates checkpoint `name` and resolves once it is durable. Changes still
   * running now are marked in it when they finish (the tracking device marks
   * at entry and again at completion), so the checkpoint's instant is this
   * call's.
   */
  async create(name: string): Promise<CheckpointInfo> {
    const problem = checkpointNameProblem(name);
    if (problem) throw new CheckpointError(`checkpoint name "${name}" ${problem}`);
    if (this.state.checkpoints.some((checkpoint) => checkpoint.name === name)) throw new CheckpointError(`checkpoint ${name} exists already`);
    if (this.state.checkpoints.length >= checkpointsMax) {
      throw new CheckpointError(`${checkpointsMax} checkpoints exist, the most there can be; remove one first (nbd-mirror checkpoint remove NAME)`);
    }
    const createdAtMs = Date.now();
    const bitmap = new Uint8Array(bitmapBytesFor(this.state.deviceSizeBytes, this.state.granularityBytes));
    const checkpoint = { name, uuid: randomBytes(16), createdAtMs, bitmap };
    this.state = { ...this.state, checkpoints: [...this.state.checkpoints, checkpoint] };
    this.changedSincePersist = true;
    try {
      await this.persist();
    } catch (error) {
      // Not durable, so it does not exist: a backup must not rely on a checkpoint the next crash forgets.
      this.state = { ...this.state, checkpoints: this.state.checkpoints.filter((each) => each !== checkpoint) };
      throw error;
    }
    this.events({ event: 'checkpoint-created', name });
    return this.list().find((info) => info.name === name)!;
  }

  /** Removes checkpoint `name` and resolves once the removal is durable. */
  async remove(name: string): Promise<void> {
    const removed = this.state.checkpoints.find((checkpoint) => checkpoint.name === name && !this.leaving.has(checkpoint));
    if (!removed) throw new CheckpointError(`no checkpoint named ${name}`);
    // Written out of the file first and dropped from memory only once that is durable: until then it is still
    // marked, so a failed removal leaves a checkpoint that missed nothing.
    this.leaving.add(removed);
    this.changedSincePersist = true;
    try {
      await this.persist();
    } finally {
      this.leaving.delete(removed);
    }
    this.state = { ...this.state, checkpoints: this.state.checkpoints.filter((checkpoint) => checkpoint !== removed) };
    this.events({ event: 'checkpoint-removed', name });
  }

  /**
   * Runs of granules, marked or not, covering [offset, offset + length) of
   * checkpoint `name` (only the first with `one`), or undefined when there is
   * no such checkpoint (removed since the client chose it).
   */
  runs(name: string, offsetBytes: number, lengthBytes: number, one: boolean): DirtyRun[] | undefined {
    const checkpoint = this.state.checkpoints.find((each) => each.name === name);
    if (!checkpoint) return undefined;
    return runsOf(checkpoint.bitmap, this.state.granularityBytes, offsetBytes, lengthBytes, one);
  }

  /** A copy of checkpoint `name`'s bitmap as it is now (a backup view's --since, frozen at its instant). */
  frozenBitmap(name: string): Uint8Array | undefined {
    const checkpoint = this.state.checkpoints.find((each) => each.name === name);
    return checkpoint ? Uint8Array.from(checkpoint.bitmap) : undefined;
  }

  /**
   * Makes every mark made so far durable. Persists run one at a time; one
   * asked for while another runs starts after it, and covers marks made
   * meanwhile. Rejects with EIO when the file cannot be written.
   */
  persist(): Promise<void> {
    const run = this.persisting.then(() => this.writeFile());
    this.persisting = run.catch(() => undefined);
    return run;
  }

  /** The sweeper's hook: called before any region-log bit is cleared. Skipped when nothing changed. */
  persistBeforeClearing(): Promise<void> {
    return this.changedSincePersist ? this.persist() : Promise.resolve();
  }

  private async writeFile(): Promise<void> {
    if (!this.changedSincePersist && fs.existsSync(this.path)) return;
    this.changedSincePersist = false;
    const state = { ...this.state, sequence: this.state.sequence + 1n,
      checkpoints: this.state.checkpoints.filter((checkpoint) => !this.leaving.has(checkpoint)) };
    // Encoded now, in one turn: marks made while the write is under way belong to the next persist.
    const bytes = encodeCheckpointFile({ ...state, checkpoints: state.checkpoints.map((checkpoint) => ({ ...checkpoint,
      bitmap: Uint8Array.from(checkpoint.bitmap) })) });
    const temporary = `${this.path}.tmp`;
    try {
      const handle = await fs.promises.open(temporary, 'w', 0o600);
      try {
        await handle.writeFile(bytes);
        await handle.sync();
      } finally {
        await handle.close();
      }
      if (this.crashPoints?.armed) await this.crashPoints.reach('checkpoint.before-rename');
      await fs.promises.rename(temporary, this.path);
      if (this.crashPoints?.armed) await this.crashPoints.reach('checkpoint.after-rename');
      const directory = await fs.promises.open(path.dirname(this.path), 'r');
      try {
        await directory.sync();
      } finally {
        await directory.close();
      }
    } catch (error) {
      this.changedSincePersist = true;
      throw new BlockError('EIO', `checkpoint file ${this.path}: ${(error as Error).message}`);
    }
    this.state = { ...this.state, sequence: state.sequence };
  }
}
