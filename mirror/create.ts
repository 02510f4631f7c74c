import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { RegionLog } from '../regionlog/region-log.js';
import { type FileLock, lockIfExists } from '../sys/file-lock.js';
import type { LegSpec } from '../backends/leg-spec.js';
import { ThinLeg } from '../backends/thin-leg.js';
import { blockDeviceTooSmall, isBlockDeviceLeg } from './leg-label.js';
import { checkRemoteExport, prepareLeg } from './leg-media.js';

export interface CreateMirrorParams {
  logPath: string;
  legs: LegSpec[];
  sizeBytes: number;
  regionSizeBytes: number;
  /** Overwrite existing files (their data and labels are lost). */
  force?: boolean;
}

export class MirrorSetupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MirrorSetupError';
  }
}

/**
 * Initialises the legs (sparse files with labels) and a clean, empty region
 * log; with a block-device leg, a log with every bit set, so the first start
 * syncs the legs from the source leg.
 */
export async function createMirror(params: CreateMirrorParams): Promise<{ mirrorUuid: Buffer; legUuids: Buffer[]; initialSync: boolean;
  /** Why the first start syncs every region: the kinds of leg that keep what they held (block devices, remote exports). */
  keptContents: string[]; }> {
  const { logPath, legs, sizeBytes, regionSizeBytes } = params;
  const legPaths = legs.map((leg) => leg.path);
  if (legPaths.length < 2) throw new MirrorSetupError(`a mirror needs at least 2 legs, ${legPaths.length} given`);
  if (new Set(legPaths).size !== legPaths.length) throw new MirrorSetupError('the same leg path is listed twice');
  if (sizeBytes % 4096 !== 0) throw new MirrorSetupError(`size ${sizeBytes} must be a multiple of 4096`);
  const localLegs = legs.filter((leg) => !leg.remote);
  if (!params.force) {
    // A remote export always exists; prepareLeg refuses one that holds another mirror's leg.
    const existing = [logPath, ...localLegs.map((leg) => leg.path)].filter((file) => fs.existsSync(file));
    if (existing.length > 0) {
      throw new MirrorSetupError(`refusing to overwrite ${existing.join(', ')} (use --force to reinitialise; their contents are lost)`);
    }
  }
  // --force must not reinitialise files a running server (or another tool) is using.
  const locks: FileLock[] = [];
  try {
    for (const [file, what] of [[logPath, 'region log'], ...localLegs.map((leg) => [leg.path, 'leg'])]) {
      const lock = lockIfExists(file, what);
      if (lock) locks.push(lock);
    }
    const mirrorUuid = randomBytes(16);
    const legUuids = legPaths.map(() => randomBytes(16));
    const devices = localLegs.filter(isBlockDeviceLeg);
    // Checked before anything is written, so a refusal leaves every leg as it was.
    for (const leg of legs) if (leg.thin) ThinLeg.refuseBlockDevice(leg.path);
    for (const device of devices) {
      const problem = blockDeviceTooSmall(device.path, sizeBytes);
      if (problem) throw new MirrorSetupError(problem);
    }
    // A block device or a remote export keeps what it held: the legs differ until the first sync.
    const keptContents = [...(devices.length > 0 ? ['a block device'] : []), ...(localLegs.length < legs.length ? ['a remote export'] : [])];
    const legsMayDiffer = keptContents.length > 0;
    // Remote legs can fail for reasons outside this machine (unreachable, credentials, another mirror's leg):
    // they are checked, without writing, before any local file exists. What this run created is removed if
    // anything fails later, so a retry is not refused as "refusing to overwrite".
    for (const leg of legs) {
      if (!leg.remote) continue;
      try {
        await checkRemoteExport(leg, sizeBytes, { overwrite: params.force });
      } catch (error) {
        const message = (error as Error).message;
        throw new MirrorSetupError(`${message.startsWith(leg.path) ? message : `${leg.path}: ${message}`}; nothing was created`);
      }
    }
    const created = [logPath, ...localLegs.map((leg) => leg.path)].filter((file) => !fs.existsSync(file));
    try {
      for (const [slot, leg] of legs.entries()) {
        try {
          await prepareLeg(leg, sizeBytes, { mirrorUuid, legUuid: legUuids[slot], slot, dataSizeBytes: sizeBytes, events: 1n },
            { overwrite: params.force });
        } catch (error) {
          throw error instanceof MirrorSetupError ? error : new MirrorSetupError((error as Error).message);
        }
      }
      const log = await RegionLog.create(logPath, { deviceSizeBytes: sizeBytes, regionSizeBytes, legUuids, mirrorUuid, legsMayDiffer },
        { overwrite: params.force });
      await log.close();
    } catch (error) {
      for (const file of created) fs.rmSync(file, { force: true });
      throw error;
    }
    return { mirrorUuid, legUuids, initialSync: legsMayDiffer, keptContents };
  } finally {
    for (const lock of locks) lock.release();
  }
}
