import type { LegSpec } from '../backends/leg-spec.js';
import { RemoteLeg } from '../backends/nbd-client/remote-leg.js';
import { encodeLabel, labelAreaBytes, labelCopyBytes, type LabelRead, type LegLabel, newestLabel } from './leg-label.js';

/**
 * A remote leg's label lives where a local leg's does: in the last 8 KiB of
 * the export, past the data the mirror serves, so the export is also a plain
 * disk image. It is read and written over NBD, through the leg's own
 * connection when it is open (qemu-nbd serves one client unless told
 * otherwise) or a short-lived one before it is.
 */
export async function readRemoteLabel(leg: RemoteLeg): Promise<LabelRead> {
  const fileSizeBytes = leg.exportSizeBytes;
  if (fileSizeBytes < 2 * labelAreaBytes) return { fileSizeBytes, problem: `${fileSizeBytes} bytes is too small for a leg` };
  const area = Buffer.alloc(labelAreaBytes);
  await leg.readRaw(fileSizeBytes - labelAreaBytes, area);
  const label = newestLabel(area);
  return typeof label === 'string' ? { fileSizeBytes, problem: label } : { fileSizeBytes, label };
}

/** Writes the next label copy over the older one, durably (FUA), as writeLabel does for a file. */
export async function writeRemoteLabel(leg: RemoteLeg, label: Omit<LegLabel, 'sequence'>): Promise<LegLabel> {
  const current = await readRemoteLabel(leg);
  if (current.problem !== undefined && current.label === undefined && current.fileSizeBytes < 2 * labelAreaBytes) {
    throw new Error(`cannot label ${leg.uri}: ${current.problem}`);
  }
  const sequence = (current.label?.sequence ?? 0n) + 1n;
  const next: LegLabel = { ...label, sequence };
  await leg.writeRaw(leg.exportSizeBytes - labelAreaBytes + Number(sequence % 2n) * labelCopyBytes, encodeLabel(next));
  return next;
}

/** Runs `work` over a connection of its own to the remote leg `spec` names, closed after. */
export async function withRemoteConnection<T>(spec: LegSpec, work: (leg: RemoteLeg) => Promise<T>): Promise<T> {
  const remote = spec.remote!;
  const leg = await RemoteLeg.connect({ address: remote.address, name: spec.path, requestTimeoutMs: remote.failfastMs,
    connectTimeoutMs: remote.connectTimeoutMs }, remote.tls);
  try {
    return await work(leg);
  } finally {
    await leg.close();
  }
}
