import fs from 'node:fs';
import path from 'node:path';
import type { EventSink } from '../blockdev/events.js';
import type { BlockDevice } from '../blockdev/types.js';
import { BackupView, type BackupViewStatus } from './backup-view.js';
import { CheckpointError, type CheckpointStore } from './checkpoint-store.js';
import type { ChangeTrackingDevice } from './tracking-device.js';

/** Scratch space of a backup view unless `backup start --scratch-size` says otherwise. */
export const defaultScratchBytes = 1024 ** 3;

/**
 * Point-in-time backup views (pull mode): `start NEW [--since OLD]` creates
 * checkpoint NEW and, in the same turn, a view of the export as it is at that
 * instant, served read-only as `<export>@NEW`; `stop NEW` ends the view and
 * frees its scratch file. A crash ends every view (their scratch files are
 * removed at the next start); the checkpoints stay valid.
 */
export class Backups {
  private readonly views = new Map<string, BackupView>();

  constructor(private readonly store: CheckpointStore, private readonly tracker: ChangeTrackingDevice, private readonly live: BlockDevice,
    private readonly logPath: string, private readonly events: EventSink) {
    // Views end with the process that served them.
    const folder = path.dirname(logPath);
    const prefix = `${path.basename(logPath)}.backup-`;
    for (const entry of fs.readdirSync(folder)) {
      if (entry.startsWith(prefix) && entry.endsWith('.scratch')) fs.rmSync(path.join(folder, entry), { force: true });
    }
  }

  view(name: string): BackupView | undefined {
    return this.views.get(name);
  }

  /** The running views, in the order they started. */
  all(): BackupView[] {
    return [...this.views.values()];
  }

  list(): BackupViewStatus[] {
    return this.all().map((view) => view.status());
  }

  async start(name: string, options: { since?: string; scratchBytes?: number } = {}): Promise<BackupViewStatus> {
    if (this.views.has(name)) throw new CheckpointError(`a backup named ${name} is running already`);
    const since = options.since === undefined ? undefined : this.store.frozenBitmap(options.since);
    if (options.since !== undefined && since === undefined) throw new CheckpointError(`no checkpoint named ${options.since} to back up since`);
    const scratchBytes = options.scratchBytes ?? defaultScratchBytes;
    if (!Number.isSafeInteger(scratchBytes) || scratchBytes <= 0) throw new CheckpointError(`scratch size ${scratchBytes} is not a positive byte count`);
    // The checkpoint is added and the view installed in this one turn: no change falls between the two instants.
    const creating = this.store.create(name);
    const view = new BackupView(name, this.live, this.store.granularityBytes, `${this.logPath}.backup-${name}.scratch`, scratchBytes,
      since && { name: options.since!, bitmap: since });
    this.tracker.addView(view);
    this.views.set(name, view);
    try {
      await creating;
    } catch (error) {
      this.tracker.removeView(view);
      this.views.delete(name);
      await view.close();
      throw error;
    }
    this.events({ event: 'backup-started', name, since: options.since ?? null });
    return view.status();
  }

  async stop(name: string): Promise<string> {
    const view = this.views.get(name);
    if (!view) throw new CheckpointError(`no backup named ${name} is running`);
    this.tracker.removeView(view);
    this.views.delete(name);
    const failed = view.failed;
    await view.close();
    this.events({ event: 'backup-stopped', name, failed: failed ?? null });
    return `backup ${name} stopped; checkpoint ${name} stays for the next incremental backup${failed ? ` (the view had failed: ${failed})` : ''}`;
  }

  async stopAll(): Promise<void> {
    for (const name of [...this.views.keys()]) await this.stop(name);
  }
}
