import assert from 'node:assert/strict';
import fs from 'node:fs';
import { BlockError, toBlockError } from '../blockdev/errors.js';
import { type BlockDevice, type DeviceCapabilities, type Extent } from '../blockdev/types.js';
import { pwriteAllSync } from '../sys/fs-io.js';
import { type DirtyRun, runsOf } from './checkpoint-store.js';

export interface BackupViewStatus {
  name: string;
  since: string | null;
  startedAt: string;
  scratchUsedBytes: number;
  scratchLimitBytes: number;
  /** Why the view stopped serving (scratch full, a scratch write failed, stopped), or null. */
  failed: string | null;
}

/**
 * A read-only, point-in-time view of the export (a pull-mode backup's
 * `<export>@NAME`): reads return the device exactly as it was when the
 * backup started, while the live export keeps taking writes. Before a live
 * change touches a granule for the first time, the granule's old bytes are
 * copied into a scratch file (copy-before-write, as QEMU's backup job and
 * libvirt's pull mode); the view reads preserved granules from there and the
 * rest from the live device. When the scratch space runs out the view fails
 * with a clear error, never the live export.
 */
export class BackupView implements BlockDevice {
  readonly sizeBytes: number;
  readonly blockSizeBytes: number;
  readonly capabilities: DeviceCapabilities;
  private readonly startedAtMs = Date.now();
  /** Scratch offset of each preserved granule, -1 while not preserved. */
  private readonly preservedAt: Float64Array;
  /** Granules being preserved now: readers and later changes wait for these. */
  private readonly preserving = new Map<number, Promise<void>>();
  /** View reads of each granule from the live device in flight: a change waits for them before it applies. */
  private readonly liveReaders = new Map<number, { count: number; drained: Array<() => void> }>();
  private scratchUsedBytes = 0;
  private failure: string | undefined;
  private readonly scratch: number;

  constructor(readonly name: string, private readonly live: BlockDevice, private readonly granularityBytes: number,
    readonly scratchPath: string, private readonly scratchLimitBytes: number,
    /** --since OLD: OLD's bitmap frozen at this view's instant, served as qemu:dirty-bitmap:OLD. */
    private readonly since: { name: string; bitmap: Uint8Array } | undefined) {
    this.sizeBytes = live.sizeBytes;
    this.blockSizeBytes = live.blockSizeBytes;
    this.capabilities = { ...live.capabilities, readOnly: true, trim: false, writeZeroes: false, fastZero: false };
    this.preservedAt = new Float64Array(Math.ceil(live.sizeBytes / granularityBytes)).fill(-1);
    this.scratch = fs.openSync(scratchPath, 'w+', 0o600);
  }

  status(): BackupViewStatus {
    return { name: this.name, since: this.since?.name ?? null, startedAt: new Date(this.startedAtMs).toISOString(),
      scratchUsedBytes: this.scratchUsedBytes, scratchLimitBytes: this.scratchLimitBytes, failed: this.failure ?? null };
  }

  /** The contexts the view's export offers besides base:allocation: the frozen --since bitmap. */
  names(): string[] {
    return this.since ? [this.since.name] : [];
  }

  runs(name: string, offsetBytes: number, lengthBytes: number, one: boolean): DirtyRun[] | undefined {
    if (!this.since || name !== this.since.name) return undefined;
    return runsOf(this.since.bitmap, this.granularityBytes, offsetBytes, lengthBytes, one);
  }

  /**
   * Called by the tracking device before a live change of the range is passed
   * down: the granules it touches are preserved first. Never rejects: a
   * failure to preserve fails the view, not the live write.
   */
  async beforeChange(offsetBytes: number, lengthBytes: number): Promise<void> {
    if (this.failure !== undefined || lengthBytes <= 0) return;
    const first = Math.floor(offsetBytes / this.granularityBytes);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / this.granularityBytes);
    const waits: Array<Promise<void>> = [];
    for (let granule = first; granule <= last; granule += 1) {
      if (this.preservedAt[granule] >= 0) continue;
      let preserving = this.preserving.get(granule);
      if (preserving === undefined) {
        preserving = this.preserve(granule).finally(() => this.preserving.delete(granule));
        this.preserving.set(granule, preserving);
      }
      waits.push(preserving);
    }
    await Promise.all(waits);
  }

  private async preserve(granule: number): Promise<void> {
    await this.liveReadsDrained(granule);
    if (this.failure !== undefined) return;
    const start = granule * this.granularityBytes;
    const length = Math.min(this.granularityBytes, this.sizeBytes - start);
    if (this.scratchUsedBytes + length > this.scratchLimitBytes) {
      this.fail(`scratch space full: ${this.scratchLimitBytes} bytes hold the granules changed since the backup started ` +
        '(give backup start a larger --scratch-size)');
      return;
    }
    const at = this.scratchUsedBytes;
    this.scratchUsedBytes += length;
    try {
      const old = Buffer.allocUnsafe(length);
      await this.live.read(start, old);
      pwriteAllSync(this.scratch, old, at);
      this.preservedAt[granule] = at;
    } catch (error) {
      this.fail(`preserving bytes ${start}-${start + length} failed: ${toBlockError(error, 'preserve').message}`);
    }
  }

  async read(offsetBytes: number, target: Buffer): Promise<void> {
    const end = offsetBytes + target.length;
    for (let at = offsetBytes; at < end;) {
      this.refuseIfFailed();
      const granule = Math.floor(at / this.granularityBytes);
      const pieceEnd = Math.min(end, (granule + 1) * this.granularityBytes);
      const piece = target.subarray(at - offsetBytes, pieceEnd - offsetBytes);
      const preserving = this.preserving.get(granule);
      if (preserving) await preserving;
      this.refuseIfFailed();
      const scratchAt = this.preservedAt[granule];
      if (scratchAt >= 0) {
        readAllAt(this.scratch, piece, scratchAt + (at - granule * this.granularityBytes));
      } else {
        const readers = this.liveReaders.get(granule) ?? { count: 0, drained: [] };
        this.liveReaders.set(granule, readers);
        readers.count += 1;
        try {
          await this.live.read(at, piece);
        } finally {
          readers.count -= 1;
          if (readers.count === 0) {
            this.liveReaders.delete(granule);
            for (const resolve of readers.drained.splice(0)) resolve();
          }
        }
      }
      at = pieceEnd;
    }
  }

  /** The live device's allocation, with every preserved granule reported as data (its old bytes are in scratch). */
  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    this.refuseIfFailed();
    const extents = await this.live.blockStatus(offsetBytes, lengthBytes);
    return extents.map((extent) => {
      const first = Math.floor(extent.offsetBytes / this.granularityBytes);
      const last = Math.floor((extent.offsetBytes + extent.lengthBytes - 1) / this.granularityBytes);
      for (let granule = first; granule <= last; granule += 1) {
        if (this.preservedAt[granule] >= 0 || this.preserving.has(granule)) return { ...extent, hole: false, zero: false };
      }
      return extent;
    });
  }

  write(): Promise<void> {
    return Promise.reject(new BlockError('EPERM', `backup view ${this.name} is read-only`));
  }

  trim(): Promise<void> {
    return this.write();
  }

  writeZeroes(): Promise<void> {
    return this.write();
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  /** Ends the view: reads fail from now on, and the scratch file is removed. */
  async close(): Promise<void> {
    this.failure ??= 'the backup was stopped';
    await Promise.allSettled([...this.preserving.values()]);
    fs.closeSync(this.scratch);
    fs.rmSync(this.scratchPath, { force: true });
  }

  get failed(): string | undefined {
    return this.failure;
  }

  private fail(reason: string): void {
    this.failure ??= reason;
    // Changes waiting for readers of a granule are not held up by a view that is gone.
    for (const readers of this.liveReaders.values()) for (const resolve of readers.drained.splice(0)) resolve();
  }

  private refuseIfFailed(): void {
    if (this.failure !== undefined) throw new BlockError('EIO', `backup view ${this.name} failed: ${this.failure}`);
  }

  private liveReadsDrained(granule: number): Promise<void> {
    const readers = this.liveReaders.get(granule);
    if (readers === undefined || readers.count === 0) return Promise.resolve();
    return new Promise((resolve) => readers.drained.push(resolve));
  }
}

function readAllAt(fd: number, target: Buffer, position: number): void {
  for (let done = 0; done < target.length;) {
    const read = fs.readSync(fd, target, done, target.length - done, position + done);
    assert(read > 0, `scratch file ended at ${position + done}`);
    done += read;
  }
}
