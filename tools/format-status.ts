import type { PoolUsage } from '../backends/thin-leg.js';
import type { PageCacheStatus } from '../pagecache/page-cache.js';
import type { StatusReport } from '../observe/status-view.js';

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

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}

/** Human-readable status: the same text for a running server's report and for the files'. */
export function formatStatus(status: StatusReport): string {
  const source = status.source === 'server' ? 'running server' : 'offline, from the files';
  const lines = status.mirrorUuid === null ? [`plain export (${source})`, `  ${status.sizeBytes} bytes`]
    : [`mirror ${status.mirrorUuid} (${source})`,
      `  ${status.sizeBytes} bytes, ${plural(status.regionCount ?? 0, 'region')} of ${status.regionSizeBytes} bytes`];
  const pending = status.health === 'resync-pending'
    ? ` (the last server stopped uncleanly; the next start resyncs the ${plural(status.bitsSet ?? 0, 'region')} whose bits are set)` : '';
  lines.push(`  health: ${status.health}${status.failure ? ` (${status.failure})` : ''}${pending}`);
  if (status.source === 'files' && status.inUse) {
    lines.push('  in use: another process holds the files (a server whose admin socket did not answer?); ' +
      'these figures are read from the files and may be behind');
  }
  if (status.cleanShutdown !== null) lines.push(`  clean shutdown: ${status.cleanShutdown}, dirty bits set: ${status.bitsSet}`);
  for (const leg of status.legs) {
    const rebuilding = leg.rebuildMode !== 'none' ? ` (${leg.rebuildMode})` : '';
    // A failure time means something only while the leg is still out: once back in sync it is history.
    const failed = leg.failedAt && leg.state !== 'in_sync' ? ` failed at ${leg.failedAt}` : '';
    lines.push(`  leg ${leg.slot}: ${leg.state}${rebuilding} ${leg.path ?? ''} ${leg.uuid ?? ''}${failed}` +
      `${leg.labelProblem ? ` label: ${leg.labelProblem}` : ''}`.trimEnd());
    if (leg.pool) lines.push(`         ${formatPool(leg.pool)}`);
    if (leg.remote?.link === 'connected') {
      lines.push(`         remote link: connected (${plural(leg.remote.connections, 'connection')})`);
    } else if (leg.remote) {
      lines.push(`         remote link: ${leg.remote.link}${leg.remote.attempts > 0 ? ` after ${plural(leg.remote.attempts, 'attempt')}` : ''}` +
        `${leg.remote.problem ? `: ${leg.remote.problem}` : ''}`);
    }
    if (leg.remote?.connectionsNote) lines.push(`         remote link: ${leg.remote.connectionsNote}`);
  }
  if (status.regions) {
    const r = status.regions;
    lines.push(`  regions: ${r.clean} clean, ${r.dirty} dirty, ${r.maybeDirty} maybe-dirty, ${r.cleanCandidate} clean-candidate; ` +
      `${r.outOfSync} out of sync; ${plural(r.bitsSet, 'bit')} set`);
  }
  if (status.resync) {
    const s = status.resync;
    const limit = s.bytesPerSecondLimit > 0 ? `, limit ${mib(s.bytesPerSecondLimit)}/s` : ', no rate limit';
    if (s.running) {
      const percent = s.regionsTotal > 0 ? Math.floor((s.regionsDone / s.regionsTotal) * 100) : 100;
      lines.push(`  resync: ${s.kind} running, ${percent}% (${s.regionsDone}/${plural(s.regionsTotal, 'region')}), ${s.bytesCopied} bytes copied${limit}`);
    } else if (s.kind === 'none') {
      lines.push(`  resync: idle${limit}`);
    } else {
      const when = s.finishedAtMs ? new Date(s.finishedAtMs).toISOString() : '';
      lines.push(`  resync: idle; last: ${s.kind} ${s.lastError ? `interrupted (${s.lastError})` : 'finished'} ${when}, ` +
        `${s.regionsDone}/${plural(s.regionsTotal, 'region')}, ${s.bytesCopied} bytes copied${limit}`);
    }
  }
  if (status.lastCheck) {
    const c = status.lastCheck;
    lines.push(c.compared
      ? `  last check: mismatch_cnt ${c.mismatches} over ${plural(c.regionsCompared, 'region')} (legs ${c.legsCompared.join(', ')}) at ${c.finishedAt}${c.repair ? ', repaired' : ''}`
      : `  last check: nothing compared (one in-sync leg) at ${c.finishedAt}`);
  }
  if (status.cache) lines.push(`  ${formatCache(status.cache)}`);
  for (const checkpoint of status.checkpoints ?? []) {
    lines.push(`  checkpoint ${checkpoint.name}: created ${checkpoint.createdAt}, ${mib(checkpoint.dirtyBytes)} changed since`);
  }
  for (const view of status.backups ?? []) {
    lines.push(`  backup ${view.name}${view.since ? ` (since ${view.since})` : ''}: started ${view.startedAt}, scratch ${mib(view.scratchUsedBytes)} ` +
      `used of ${mib(view.scratchLimitBytes)}${view.failed ? `; FAILED (${view.failed})` : ''}`);
  }
  return lines.join('\n');
}
