import fs from 'node:fs';
import type { LegSpec } from '../backends/leg-spec.js';
import type { RemoteLeg } from '../backends/nbd-client/remote-leg.js';
import { formatUuid, type LegRecord, type LogState } from '../regionlog/format.js';
import { labelAreaBytes, type LabelRead, type LegLabel } from './leg-label.js';
import { readLegLabel } from './leg-media.js';

export type LegVerdict =
  /** `grown`: the leg is larger than when it was labelled, and its label was found at the old end (relocateLabel moves it). */
  | { kind: 'ok'; grown?: { label: LegLabel; labelAtBytes: number; legBytes: number } }
  | { kind: 'missing'; problem: string }
  /** Not this mirror's leg, or stale: refused unless forced (then rebuilt in full); `hint` replaces the generic advice. */
  | { kind: 'refused'; problem: string; hint?: string };

/**
 * Decides whether the file or export `spec` names is the leg the log expects
 * in `slot`, with a message an operator can act on when it is not. A remote
 * that cannot be reached is missing, as a file that does not exist is.
 */
export async function checkLeg(spec: LegSpec, slot: number, state: LogState, open?: RemoteLeg): Promise<LegVerdict> {
  const { path } = spec;
  const thin = spec.thin !== undefined;
  if (!spec.remote && !fs.existsSync(path)) return { kind: 'missing', problem: `leg ${slot} (${path}) does not exist` };
  let read: LabelRead;
  try {
    read = await readLegLabel(spec, state.deviceSizeBytes, open);
  } catch (error) {
    return { kind: 'missing', problem: `leg ${slot} (${path}) cannot be ${spec.remote ? 'reached' : 'read'}: ${(error as Error).message}` };
  }
  const record: LegRecord = state.legs[slot];
  const label = read.label;
  if (!label) {
    const expectedBytes = state.deviceSizeBytes + labelAreaBytes;
    if (!thin && !spec.remote && read.fileSizeBytes > expectedBytes) {
      // Not a rebuild case: a leg that only grew keeps its data at the start, and its label was not found.
      return { kind: 'refused', problem: `leg ${slot} (${path}) changed size: it is ${read.fileSizeBytes} bytes, and a leg of this ` +
        `mirror is ${expectedBytes} (${state.deviceSizeBytes} of data and the label at its end); no label was found at its end ` +
        `(${read.problem}) nor where its end used to be. If it grew, shrink it back to where it was (truncate -s, lvreduce), ` +
        'or restore its label; its data is not lost', hint: 'A leg that is truly not this mirror\'s can be taken in with --force, which rebuilds it fully' };
    }
    return { kind: 'refused', problem: `leg ${slot} (${path}) has no valid nbd-mirror label (${read.problem}); ` +
      'it was not created by nbd-mirror create, or its label is corrupted' };
  }
  if (!label.mirrorUuid.equals(state.mirrorUuid)) {
    return { kind: 'refused', problem: `leg ${slot} (${path}) belongs to mirror ${formatUuid(label.mirrorUuid)}, ` +
      `but the region log is for mirror ${formatUuid(state.mirrorUuid)}` };
  }
  if (!label.legUuid.equals(record.uuid)) {
    return { kind: 'refused', problem: `leg ${slot} (${path}) is leg ${formatUuid(label.legUuid)} (slot ${label.slot}), ` +
      `but slot ${slot} of the log holds leg ${formatUuid(record.uuid)}`,
    hint: `if slot ${slot} was replaced (nbd-mirror replace), the log expects the new leg's file: name it in place of ${path} ` +
      '(--leg, or storage.legs in the configuration). Only if this very file must become the slot\'s leg again, start with --force, ' +
      'which rebuilds it fully from the other legs' };
  }
  if (label.dataSizeBytes !== state.deviceSizeBytes || read.fileSizeBytes < state.deviceSizeBytes + labelAreaBytes) {
    return { kind: 'refused', problem: `leg ${slot} (${path}) holds ${label.dataSizeBytes} bytes in a ` +
      `${read.fileSizeBytes}-byte file, but the mirror is ${state.deviceSizeBytes} bytes (legs of different sizes)` };
  }
  const acceptable = label.events === record.events || (state.labelUpdatePending && label.events === state.eventsCurrent);
  if (record.state === 'in_sync' && !acceptable) {
    if (label.events > record.events) {
      // The leg went on after the log's last word about it. After a takeover the leg holds the newest writes,
      // so the one wrong action is to rebuild it from here: the advice leads with that case, and --force comes
      // only with what it destroys.
      return { kind: 'refused', problem: `leg ${slot} (${path}) is newer than the region log: its label says events ${label.events}, ` +
        `the log expects ${record.events}. Most likely another host took this leg over (nbd-mirror takeover) and wrote to it ` +
        'since: a split brain, where that side holds writes this log never saw. Otherwise this log is an older copy ' +
        '(a restored backup, or a disk that lost writes it had acknowledged) whose dirty bits may miss regions where the legs differ',
      hint: 'Safe steps: after a takeover, keep serving the side that took over and do not start this server against its leg; ' +
        'to make this host a replica again, seed it from the new primary (nbd-mirror replace there). If this log is an older ' +
        `copy, use the region log that belongs with these legs. Do not use --force for this: it would rebuild leg ${slot} ` +
        'fully from the other legs here, destroying every write made to it since' };
    }
    return { kind: 'refused', problem: `leg ${slot} (${path}) is stale: its label says events ${label.events}, ` +
      `the log expects ${record.events}; it is an older copy of the leg. Re-add it (nbd-mirror re-add) to resync it` };
  }
  if (record.state !== 'in_sync' && label.events > record.events && !(state.labelUpdatePending && label.events === state.eventsCurrent)) {
    // Labels are stamped only while a leg is in sync with this log: a newer one was stamped by another
    // mirror instance (a takeover on another host). Merging it would overwrite writes this log never saw.
    return { kind: 'refused', problem: `leg ${slot} (${path}) was written elsewhere after it left this mirror: its label says events ` +
      `${label.events}, this log last saw it at ${record.events} (a takeover on another host, a split brain); refusing to merge it`,
    hint: 'decide which side is the one to keep. To keep this side, re-add --force rebuilds the leg from it (the leg\'s newer ' +
      'writes are lost); to keep the other, stop this server and serve that side' };
  }
  if (read.movedFromBytes !== undefined) {
    return { kind: 'ok', grown: { label, labelAtBytes: read.movedFromBytes, legBytes: read.fileSizeBytes } };
  }
  return { kind: 'ok' };
}
