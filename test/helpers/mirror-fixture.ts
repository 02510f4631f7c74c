import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import type { FaultPlan } from '../../faults/fault-device.js';
import { type LegSpec, openLeg, type ThinSpec } from '../../backends/leg-spec.js';
import { MirrorController, type MirrorSettings } from '../../mirror/controller.js';
import { makeTempDir } from './tools.js';

export interface MirrorFixture {
  dir: string;
  logPath: string;
  legPaths: string[];
  settings: MirrorSettings;
  open(overrides?: Partial<MirrorSettings>): Promise<MirrorController>;
  cleanup(): void;
}

export const silentLogger = pino({ level: 'silent' });

/**
 * Fixture folders not cleaned up yet. A test that fails an assertion never
 * reaches its cleanup() call, so whatever is left goes when the test worker
 * exits: leg images hold nothing a failure report needs.
 */
const liveFixtureDirs = new Set<string>();
process.on('exit', () => {
  for (const dir of liveFixtureDirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** Temp files for an in-process mirror; `open` creates it the first time and reassembles it after. */
export function mirrorFixture(options: { legs?: number; sizeBytes?: number; regionSizeBytes?: number; faults?: Array<FaultPlan | undefined>;
  thin?: Array<ThinSpec | undefined>; } = {}): MirrorFixture {
  const dir = makeTempDir('mirror-');
  liveFixtureDirs.add(dir);
  const legPaths = Array.from({ length: options.legs ?? 2 }, (_, slot) => path.join(dir, options.thin?.[slot] ? `leg${slot}.thin` : `leg${slot}.img`));
  const settings: MirrorSettings = {
    logPath: path.join(dir, 'mirror.log'),
    legs: legPaths.map((legPath, slot) => ({ path: legPath, faults: options.faults?.[slot], thin: options.thin?.[slot] })),
    sizeBytes: options.sizeBytes ?? 16 * 1024 * 1024,
    regionSizeBytes: options.regionSizeBytes ?? 64 * 1024,
    readPolicy: 'round-robin',
    resyncBytesPerSecond: 0,
    createIfMissing: true,
    force: false,
    // Tests call sweep() by hand and expect the first one to clear quiet regions.
    quietSweepsBeforeClean: 0,
  };
  return {
    dir, logPath: settings.logPath, legPaths, settings,
    open: (overrides = {}) => MirrorController.open({ ...settings, legs: settings.legs.map((leg) => ({ ...leg })), ...overrides }, silentLogger),
    cleanup: () => {
      fs.rmSync(dir, { recursive: true, force: true });
      liveFixtureDirs.delete(dir);
    },
  };
}

export async function stopMirror(controller: MirrorController): Promise<void> {
  await controller.shutdown();
  await controller.close();
}

/** A fixture whose mirror was created, then cleanly stopped: what the refusal tests start from. */
export async function createdMirrorFixture(): Promise<MirrorFixture> {
  const fixture = mirrorFixture();
  await stopMirror(await fixture.open());
  return fixture;
}

/** The data areas of the leg files are byte-identical (labels differ by design). */
export function legsIdentical(legPaths: string[], sizeBytes: number): { identical: boolean; firstDifference?: number } {
  const fds = legPaths.map((legPath) => fs.openSync(legPath, 'r'));
  try {
    const chunk = 1 << 20;
    const buffers = fds.map(() => Buffer.alloc(chunk));
    for (let at = 0; at < sizeBytes; at += chunk) {
      const length = Math.min(chunk, sizeBytes - at);
      fds.forEach((fd, index) => { buffers[index].fill(0); fs.readSync(fd, buffers[index], 0, length, at); });
      for (let index = 1; index < fds.length; index += 1) {
        if (!buffers[index].subarray(0, length).equals(buffers[0].subarray(0, length))) {
          for (let byte = 0; byte < length; byte += 1) {
            if (buffers[index][byte] !== buffers[0][byte]) return { identical: false, firstDifference: at + byte };
          }
        }
      }
    }
    return { identical: true };
  } finally {
    for (const fd of fds) fs.closeSync(fd);
  }
}

/** A leg's data area, read through its own backend (thin pools are not flat files). Open it only while no server holds it, or after a flush. */
export async function legContents(leg: LegSpec, sizeBytes: number): Promise<Buffer> {
  const opened = await openLeg({ path: leg.path, thin: leg.thin }, sizeBytes, silentLogger, { readOnly: true });
  try {
    const data = Buffer.alloc(sizeBytes);
    await opened.device.read(0, data);
    return data;
  } finally {
    await opened.device.close();
  }
}
