/**
 * State changes an operator watches (nbd-mirror events, --exec hooks,
 * metrics). Layers report them through an EventSink passed in with their
 * options, as they are given a logger: nothing below calls up into the
 * server, and a layer given no sink reports nothing.
 */
export type MirrorEvent =
  | { event: 'leg-faulty'; slot: number; path: string; reason: string }
  | { event: 'leg-rebuilding'; slot: number; path: string; mode: 'bitmap' | 'full'; regions?: number }
  | { event: 'leg-in-sync'; slot: number; path: string }
  | { event: 'leg-removed'; slot: number; path: string }
  /** A remote leg answered again and was re-added by itself (mirror/remote-legs.ts). */
  | { event: 'leg-reconnected'; slot: number; path: string; attempt: number }
  /** A remote leg answered again but its label says it is not the leg that left: not written, left for the operator. */
  | { event: 'leg-refused'; slot: number; path: string; reason: string }
  | { event: 'resync-started'; kind: string; regionsTotal: number }
  | { event: 'resync-progress'; kind: string; regionsDone: number; regionsTotal: number; bytesCopied: number }
  | { event: 'resync-finished'; kind: string; regionsDone: number; regionsTotal: number; bytesCopied: number; ms: number; error?: string }
  | { event: 'check-finished'; mismatches: number; regionsCompared: number; legsCompared: number[]; repair: boolean; compared: boolean }
  | { event: 'sweep'; candidates: number; cleared: number }
  | { event: 'enospc'; layer: 'cache' | 'leg'; message: string }
  | { event: 'low-water'; path: string; below: boolean; freeBytes: number; lowWaterBytes: number }
  | { event: 'cache-failed'; message: string }
  | { event: 'mirror-failed'; message: string }
  | { event: 'client-attached' | 'client-detached'; id: number; remote: string }
  /** Refused at accept (allow list, per-address cap, full house), or dropped while negotiating to admit a newer client. */
  | { event: 'client-refused'; reason: string; remote: string }
  /** A checkpoint for incremental backup was created or removed, durably (docs/changed-blocks.md). */
  | { event: 'checkpoint-created' | 'checkpoint-removed'; name: string }
  /** A point-in-time backup view started or stopped (with why it had failed, if it had). */
  | { event: 'backup-started'; name: string; since: string | null }
  | { event: 'backup-stopped'; name: string; failed: string | null };

export type EventSink = (event: MirrorEvent) => void;

/** A sink that drops everything: the default of every layer. */
export const noEvents: EventSink = () => undefined;
