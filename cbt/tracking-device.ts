import { type BlockDevice, type Extent, finishedNow, type WriteFlags, type ZeroFlags } from '../blockdev/types.js';
import type { BackupView } from './backup-view.js';
import type { CheckpointStore } from './checkpoint-store.js';

/**
 * The top of the stack when checkpoints are possible: every write, trim and
 * zeroing a client sends marks its granules in every checkpoint, above the
 * cache, so a change is tracked from the moment it is accepted (a write the
 * cache still holds is already "changed" for a backup reading the export).
 * Marked at entry, for the checkpoints that exist then, and again when the
 * change settles, for one created while it ran (with no checkpoint at entry
 * too: only the settle mark then, and none for a change finished in its own
 * turn, so tracking costs a settled promise's callback until it is used).
 */
export class ChangeTrackingDevice implements BlockDevice {
  readonly sizeBytes: number;
  readonly blockSizeBytes: number;
  readonly capabilities: BlockDevice['capabilities'];
  readonly lendFileRange: BlockDevice['lendFileRange'];
  private readonly views = new Set<BackupView>();
  /** Changes waiting to preserve for a view, and the end of that queue. */
  private queued = 0;
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly inner: BlockDevice, private readonly store: CheckpointStore) {
    this.sizeBytes = inner.sizeBytes;
    this.blockSizeBytes = inner.blockSizeBytes;
    this.capabilities = inner.capabilities;
    this.lendFileRange = inner.lendFileRange?.bind(inner);
  }

  read(offsetBytes: number, target: Buffer): Promise<void> {
    return this.inner.read(offsetBytes, target);
  }

  write(offsetBytes: number, data: Buffer, flags: WriteFlags): Promise<void> {
    return this.change(offsetBytes, data.length, () => this.inner.write(offsetBytes, data, flags));
  }

  trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void> {
    return this.change(offsetBytes, lengthBytes, () => this.inner.trim(offsetBytes, lengthBytes, flags));
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    return this.change(offsetBytes, lengthBytes, () => this.inner.writeZeroes(offsetBytes, lengthBytes, flags));
  }

  /** A point-in-time backup view: from now on every change first preserves what it overwrites there. */
  addView(view: BackupView): void {
    this.views.add(view);
  }

  removeView(view: BackupView): void {
    this.views.delete(view);
  }

  /**
   * Marks, and with a backup view running, preserves the old bytes before
   * the change goes down. Changes then wait in one queue, in arrival order,
   * so overlapping ones still apply in the order they came (a later one
   * whose granules are preserved must not overtake an earlier one still
   * copying); the queue drains before the direct path resumes.
   */
  private change(offsetBytes: number, lengthBytes: number, apply: () => Promise<void>): Promise<void> {
    this.store.mark(offsetBytes, lengthBytes);
    if (this.views.size === 0 && this.queued === 0) return this.markWhenSettled(offsetBytes, lengthBytes, apply());
    const views = [...this.views];
    this.queued += 1;
    const preserved = this.queue.then(() => Promise.all(views.map((view) => view.beforeChange(offsetBytes, lengthBytes)))).then(() => undefined);
    this.queue = preserved;
    return this.markWhenSettled(offsetBytes, lengthBytes, preserved.then(() => {
      this.queued -= 1;
      return apply();
    }));
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    return this.inner.blockStatus(offsetBytes, lengthBytes);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  /**
   * The second mark, for a checkpoint created while the change ran. A failed
   * change is marked too: it may have applied in part.
   */
  private markWhenSettled(offsetBytes: number, lengthBytes: number, change: Promise<void>): Promise<void> {
    // Finished in its own turn: no checkpoint can have been created since the entry mark.
    if (change === finishedNow) return finishedNow;
    return change.finally(() => this.store.mark(offsetBytes, lengthBytes));
  }
}
