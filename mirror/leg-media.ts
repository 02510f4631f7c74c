import type { LegSpec } from '../backends/leg-spec.js';
import type { RemoteLeg } from '../backends/nbd-client/remote-leg.js';
import { formatUuid } from '../regionlog/format.js';
import { createLegFile, labelAreaBytes, type LabelRead, type LegLabel, readLabel, writeLabel } from './leg-label.js';
import { readRemoteLabel, withRemoteConnection, writeRemoteLabel } from './remote-label.js';

/**
 * Label I/O for a leg of either kind: a file or block device (synchronous
 * file I/O, leg-label.ts) or an NBD export (remote-label.ts). `open` is the
 * remote leg's running connection, used instead of a new one when given.
 */
export async function readLegLabel(spec: LegSpec, dataSizeBytes?: number, open?: RemoteLeg): Promise<LabelRead> {
  if (!spec.remote) return readLabel(spec.path, spec.thin !== undefined, dataSizeBytes);
  return open ? readRemoteLabel(open) : withRemoteConnection(spec, readRemoteLabel);
}

export async function writeLegLabel(spec: LegSpec, label: Omit<LegLabel, 'sequence'>, open?: RemoteLeg): Promise<LegLabel> {
  if (!spec.remote) return writeLabel(spec.path, label, spec.thin !== undefined);
  return open ? writeRemoteLabel(open, label) : withRemoteConnection(spec, (leg) => writeRemoteLabel(leg, label));
}

/**
 * Makes a leg ready to join a mirror. A file is created; a remote export
 * already exists and keeps its contents (so a mirror over it starts with a
 * full sync, as over a block device), and one that holds another mirror's
 * leg is refused unless `overwrite`.
 */
export async function prepareLeg(spec: LegSpec, dataSizeBytes: number, label: Omit<LegLabel, 'sequence'>,
  options: { overwrite?: boolean } = {}): Promise<LegLabel> {
  if (!spec.remote) return createLegFile(spec, dataSizeBytes, label, options);
  return withRemoteConnection(spec, async (leg) => {
    await refuseUnfitExport(spec, leg, dataSizeBytes, options);
    return writeRemoteLabel(leg, label);
  });
}

/**
 * Connects to a remote leg's export and checks, without writing, that
 * prepareLeg would take it: reachable, the credentials accepted, large
 * enough, and not holding a leg (unless overwriting). create runs it for
 * every remote leg before it creates anything.
 */
export async function checkRemoteExport(spec: LegSpec, dataSizeBytes: number, options: { overwrite?: boolean } = {}): Promise<void> {
  await withRemoteConnection(spec, (leg) => refuseUnfitExport(spec, leg, dataSizeBytes, options));
}

async function refuseUnfitExport(spec: LegSpec, leg: RemoteLeg, dataSizeBytes: number, options: { overwrite?: boolean }): Promise<void> {
  if (leg.exportSizeBytes < dataSizeBytes + labelAreaBytes) {
    throw new Error(`${spec.path} is ${leg.exportSizeBytes} bytes, fewer than the ${dataSizeBytes} of data plus the ` +
      `${labelAreaBytes}-byte label at its end`);
  }
  const current = await readRemoteLabel(leg);
  if (current.label && !options.overwrite) {
    throw new Error(`${spec.path} already holds leg ${current.label.slot} of mirror ${formatUuid(current.label.mirrorUuid)}; ` +
      'refusing to take it over (use --force; that leg\'s data is lost)');
  }
}
