/** Human-readable status, for a running server's answer or the offline view of the files. */
export function formatStatus(status: {
  mirrorUuid: string; sizeBytes: number; regionSizeBytes: number; regionCount: number; health?: string; failure?: string;
  cleanShutdown?: boolean; bitsSet?: number;
  legs: Array<{ slot: number; path?: string; uuid: string; state: string; rebuildMode: string; failedAt?: string; labelProblem?: string }>;
  regions?: Record<string, number>;
  resync?: { kind: string; running: boolean; regionsDone: number; regionsTotal: number; bytesCopied: number; lastError?: string };
}, source: string): string {
  const lines = [`mirror ${status.mirrorUuid} (${source})`,
    `  ${status.sizeBytes} bytes, ${status.regionCount} regions of ${status.regionSizeBytes} bytes`];
  if (status.health) lines.push(`  health: ${status.health}${status.failure ? ` (${status.failure})` : ''}`);
  if (status.cleanShutdown !== undefined) lines.push(`  clean shutdown: ${status.cleanShutdown}, dirty bits set: ${status.bitsSet}`);
  for (const leg of status.legs) {
    lines.push(`  leg ${leg.slot}: ${leg.state}${leg.rebuildMode !== 'none' ? ` (${leg.rebuildMode})` : ''} ${leg.path ?? ''} ${leg.uuid}` +
      `${leg.failedAt ? ` failed at ${leg.failedAt}` : ''}${leg.labelProblem ? ` label: ${leg.labelProblem}` : ''}`);
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
  return lines.join('\n');
}
