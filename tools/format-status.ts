import type { PoolUsage } from '../backends/thin-leg.js';
import type { PageCacheStatus } from '../pagecache/page-cache.js';

const MiB = 1024 * 1024;

function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(bytes % MiB === 0 ? 0 : 1)} MiB`;
}

export function formatPool(pool: PoolUsage): string {
  return `thin pool ${mib(pool.usedBytes)} used of ${mib(pool.capacityBytes)} (${mib(pool.freeBytes)} free, ` +
    `low water ${mib(pool.lowWaterBytes)}${pool.belowLowWater ? ', BELOW LOW WATER: grow it' : ''})`;
}

function formatCache(cache: PageCacheStatus): string {
  return `cache: ${mib(cache.dirtyBytes)} dirty of ${mib(cache.dirtyLimitBytes)} limit, ${mib(cache.cachedBytes)} cached of ` +
    `${mib(cache.capacityBytes)}${cache.noSpace ? `; writeback out of space (${cache.noSpace})` : ''}` +
    `${cache.failed ? `; FAILED (${cache.failed})` : ''}`;
}

/** Human-readable status, for a running server's answer or the offline view of the files. */
export function formatStatus(status: {
  kind?: string; mirrorUuid?: string; sizeBytes: number; regionSizeBytes?: number; regionCount?: number; health?: string; failure?: string;
  cleanShutdown?: boolean; bitsSet?: number; inUse?: boolean;
  legs: Array<{ slot: number; path?: string; uuid?: string; state: string; rebuildMode?: string; failedAt?: string; labelProblem?: string;
    pool?: PoolUsage }>;
  regions?: Record<string, number>;
  resync?: { kind: string; running: boolean; regionsDone: number; regionsTotal: number; bytesCopied: number; lastError?: string };
  cache?: PageCacheStatus;
}, source: string): string {
  const lines = status.mirrorUuid === undefined ? [`plain export (${source})`, `  ${status.sizeBytes} bytes`]
    : [`mirror ${status.mirrorUuid} (${source})`, `  ${status.sizeBytes} bytes, ${status.regionCount} regions of ${status.regionSizeBytes} bytes`];
  if (status.health) lines.push(`  health: ${status.health}${status.failure ? ` (${status.failure})` : ''}`);
  if (status.inUse) {
    lines.push('  in use: another process holds the files (a server whose admin socket did not answer?); ' +
      'these figures are read from the files and may be behind');
  }
  if (status.cleanShutdown !== undefined) lines.push(`  clean shutdown: ${status.cleanShutdown}, dirty bits set: ${status.bitsSet}`);
  for (const leg of status.legs) {
    lines.push(`  leg ${leg.slot}: ${leg.state}${leg.rebuildMode && leg.rebuildMode !== 'none' ? ` (${leg.rebuildMode})` : ''} ${leg.path ?? ''} ${leg.uuid ?? ''}` +
      `${leg.failedAt ? ` failed at ${leg.failedAt}` : ''}${leg.labelProblem ? ` label: ${leg.labelProblem}` : ''}`);
    if (leg.pool) lines.push(`         ${formatPool(leg.pool)}`);
  }
  if (status.regions) {
    const r = status.regions;
    lines.push(`  regions: ${r.clean} clean, ${r.dirty} dirty, ${r.maybeDirty} maybe-dirty, ${r.cleanCandidate} clean-candidate; ` +
      `${r.outOfSync} out of sync; ${r.bitsSet} bits set`);
  }
  if (status.resync) {
    const s = status.resync;
    lines.push(`  resync: ${s.running ? 'running' : 'idle'} (${s.kind}) ${s.regionsDone}/${s.regionsTotal} regions, ${s.bytesCopied} bytes copied` +
      `${s.lastError ? `, last error: ${s.lastError}` : ''}`);
  }
  if (status.cache) lines.push(`  ${formatCache(status.cache)}`);
  return lines.join('\n');
}
