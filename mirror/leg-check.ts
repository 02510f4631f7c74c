import fs from 'node:fs';
import { formatUuid, type LegRecord, type LogState } from '../regionlog/format.js';
import { labelAreaBytes, type LabelRead, readLabel } from './leg-label.js';

export type LegVerdict =
  | { kind: 'ok' }
  | { kind: 'missing'; problem: string }
  /** Not this mirror's leg, or stale: refused unless forced (then rebuilt in full). */
  | { kind: 'refused'; problem: string };

/**
 * Decides whether the file at `path` is the leg the log expects in `slot`,
 * with a message an operator can act on when it is not.
 */
export function checkLeg(path: string, slot: number, state: LogState, thin = false): LegVerdict {
  if (!fs.existsSync(path)) return { kind: 'missing', problem: `leg ${slot} (${path}) does not exist` };
  let read: LabelRead;
  try {
    read = readLabel(path, thin);
  } catch (error) {
    return { kind: 'missing', problem: `leg ${slot} (${path}) cannot be read: ${(error as Error).message}` };
  }
  const record: LegRecord = state.legs[slot];
  const label = read.label;
  if (!label) {
    return { kind: 'refused', problem: `leg ${slot} (${path}) has no valid nbd-mirror label (${read.problem}); ` +
      'it was not created by nbd-mirror create, or its label is corrupted' };
  }
  if (!label.mirrorUuid.equals(state.mirrorUuid)) {
    return { kind: 'refused', problem: `leg ${slot} (${path}) belongs to mirror ${formatUuid(label.mirrorUuid)}, ` +
      `but the region log is for mirror ${formatUuid(state.mirrorUuid)}` };
  }
  if (!label.legUuid.equals(record.uuid)) {
    return { kind: 'refused', problem: `leg ${slot} (${path}) is leg ${formatUuid(label.legUuid)} (slot ${label.slot}), ` +
      `but slot ${slot} of the log holds leg ${formatUuid(record.uuid)}` };
  }
  if (label.dataSizeBytes !== state.deviceSizeBytes || read.fileSizeBytes < state.deviceSizeBytes + labelAreaBytes) {
    return { kind: 'refused', problem: `leg ${slot} (${path}) holds ${label.dataSizeBytes} bytes in a ` +
      `${read.fileSizeBytes}-byte file, but the mirror is ${state.deviceSizeBytes} bytes (legs of different sizes)` };
  }
  const acceptable = label.events === record.events || (state.labelUpdatePending && label.events === state.eventsCurrent);
  if (record.state === 'in_sync' && !acceptable) {
    if (label.events > record.events) {
      // The leg went on after the log's last word about it: the log, not the leg, is the old copy.
      return { kind: 'refused', problem: `leg ${slot} (${path}) is newer than the region log: its label says events ${label.events}, ` +
        `the log expects ${record.events}; the log is an older copy (a restored backup, or a disk that lost writes it had ` +
        'acknowledged) and its dirty bits may miss regions where the legs differ. Use the region log that belongs with these legs' };
    }
    return { kind: 'refused', problem: `leg ${slot} (${path}) is stale: its label says events ${label.events}, ` +
      `the log expects ${record.events}; it is an older copy of the leg. Re-add it (nbd-mirror re-add) to resync it` };
  }
  return { kind: 'ok' };
}
