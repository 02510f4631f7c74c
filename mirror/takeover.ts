import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import type { LegSpec } from '../backends/leg-spec.js';
import { formatUuid } from '../regionlog/format.js';
import { RegionLog } from '../regionlog/region-log.js';
import { MirrorSetupError } from './create.js';
import type { LegLabel } from './leg-label.js';
import { readLegLabel } from './leg-media.js';
import { applyLegEvent } from './leg-states.js';

export interface TakeoverResult {
  mirrorUuid: Buffer;
  /** Slots that hold the newest copy: in sync in the new log. */
  survivors: number[];
  /** Labelled legs of the mirror with an older copy: faulty (re-add copies every region, all bits being set). */
  stale: number[];
  /** Slots with no leg to take (unreachable, missing, unlabelled): empty, to be filled by replace. */
  emptied: Array<{ slot: number; why: string }>;
  events: bigint;
}

/**
 * The region log was lost with the primary's host: builds a new one on this
 * host from the legs' labels, so the surviving replica can be served alone
 * and degraded (docs/remote-legs.md, "Takeover"). Every slot is as the
 * configuration lists it. Legs holding the newest events value of the
 * mirror are in sync; older copies are faulty; slots with no reachable
 * labelled leg are emptied, so the old primary's leg, when it returns, is
 * never merged silently: re-add refuses an empty slot, and replace refuses
 * an export holding a leg of this mirror unless forced (which rebuilds it
 * from the survivors, discarding what only it held). The first start stamps
 * the survivors with a newer events value, so the old primary's log, if it
 * comes back, refuses them as newer than it knows.
 */
export async function takeoverMirror(params: { logPath: string; legs: LegSpec[]; regionSizeBytes: number; force?: boolean }): Promise<TakeoverResult> {
  const { logPath, legs } = params;
  if (fs.existsSync(logPath) && !params.force) {
    throw new MirrorSetupError(`${logPath} exists; a takeover writes a new region log (use --force to overwrite it, ` +
      'only if it is not the log of a running mirror)');
  }
  if (legs.length < 2) throw new MirrorSetupError('list every slot of the mirror (the lost legs too, by their old paths or URIs)');
  const labels: Array<LegLabel | undefined> = [];
  const emptied: TakeoverResult['emptied'] = [];
  for (const [slot, spec] of legs.entries()) {
    try {
      const read = await readLegLabel(spec);
      labels.push(read.label);
      if (!read.label) emptied.push({ slot, why: `no nbd-mirror label (${read.problem})` });
    } catch (error) {
      labels.push(undefined);
      emptied.push({ slot, why: `unreachable (${(error as Error).message})` });
    }
  }
  const labelled = labels.flatMap((label, slot) => (label ? [{ slot, label }] : []));
  if (labelled.length === 0) throw new MirrorSetupError('no listed leg holds an nbd-mirror label; there is nothing to take over');
  const { mirrorUuid, dataSizeBytes } = labelled[0].label;
  for (const { slot, label } of labelled) {
    if (!label.mirrorUuid.equals(mirrorUuid)) {
      throw new MirrorSetupError(`leg ${slot} (${legs[slot].path}) belongs to mirror ${formatUuid(label.mirrorUuid)}, ` +
        `leg ${labelled[0].slot} to ${formatUuid(mirrorUuid)}; list the legs of one mirror`);
    }
    if (label.slot !== slot) {
      throw new MirrorSetupError(`${legs[slot].path} is listed as leg ${slot} but is the mirror's leg ${label.slot}; ` +
        'list the legs in their slots');
    }
    if (label.dataSizeBytes !== dataSizeBytes) {
      throw new MirrorSetupError(`leg ${slot} holds ${label.dataSizeBytes} bytes, leg ${labelled[0].slot} ${dataSizeBytes}`);
    }
  }
  const events = labelled.reduce((newest, { label }) => (label.events > newest ? label.events : newest), 0n);
  const survivors = labelled.filter(({ label }) => label.events === events).map(({ slot }) => slot);
  const stale = labelled.filter(({ label }) => label.events < events).map(({ slot }) => slot);

  const log = await RegionLog.create(logPath, {
    deviceSizeBytes: dataSizeBytes, regionSizeBytes: params.regionSizeBytes, mirrorUuid,
    legUuids: labels.map((label) => label?.legUuid ?? randomBytes(16)),
    // Nothing says where the legs differ: every bit set, so a leg brought back copies everything.
    legsMayDiffer: true,
  }, { overwrite: params.force });
  try {
    const { state } = log;
    state.eventsCurrent = events;
    state.eventsPrevious = events;
    for (const [slot, record] of state.legs.entries()) {
      const label = labels[slot];
      if (label && label.events === events) {
        record.events = events;
      } else if (label) {
        record.events = label.events;
        applyLegEvent(record, 'failed');
      } else {
        applyLegEvent(record, 'failed');
        applyLegEvent(record, 'removed');
      }
    }
    await log.commit();
  } finally {
    await log.close();
  }
  return { mirrorUuid, survivors, stale, emptied, events };
}
