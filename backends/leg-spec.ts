import type { EventSink } from '../blockdev/events.js';
import fs from 'node:fs';
import type { Logger } from 'pino';
import type { BlockDevice } from '../blockdev/types.js';
import { type DeviceWrap, wrapDevice } from '../faults/device-wrap.js';
import { type PowerCutDevice, PowerCutRegistry } from '../faults/power-cut-device.js';
import { CheckedDevice } from '../blockdev/checked-device.js';
import type { WriteLogDevice } from '../faults/write-log-device.js';
import type { FaultDevice } from '../faults/fault-device.js';
import { FileLeg } from './file-leg.js';
import type { RemoteSpec } from './nbd-client/remote-spec.js';
import { RemoteLeg } from './nbd-client/remote-leg.js';
import { ThinLeg } from './thin-leg.js';

/** A thin leg's pool, as configured; the pool file's superblock is authoritative once created. */
export interface ThinSpec {
  poolBytes: number;
  chunkSizeBytes: number;
  lowWaterBytes: number;
}

export type { RemoteSpec } from './nbd-client/remote-spec.js';

/** One leg as the configuration describes it, with any crash-toolkit devices under it. */
export interface LegSpec extends DeviceWrap {
  /** A file or block device path, or for a remote leg its NBD URI. */
  path: string;
  /** Set: the leg is a thin pool file; unset: a plain file or block device. */
  thin?: ThinSpec;
  /** Set: the leg is an NBD export on another server (path is its URI). */
  remote?: RemoteSpec;
  /** md's write-mostly: reads go to other in-sync legs and come here only when none is left. */
  writeMostly?: boolean;
}

export interface OpenedLeg {
  /** What the layer above uses: the leg, or the crash toolkit's devices over it. */
  device: BlockDevice;
  fault?: FaultDevice;
  powerCut?: PowerCutDevice;
  writeLog?: WriteLogDevice;
  thin?: ThinLeg;
  /** The remote leg's own connection (its label lies beyond the data the device serves). */
  remote?: RemoteLeg;
}

/**
 * Opens a leg of either kind, exposing exactly `sizeBytes` of data, with the
 * crash toolkit's devices its configuration names stacked over it.
 */
export async function openLeg(leg: LegSpec, sizeBytes: number | undefined, logger: Logger,
  options: { readOnly?: boolean; createSizeBytes?: number; name?: string; events?: EventSink; powerCuts?: PowerCutRegistry } = {}): Promise<OpenedLeg> {
  let device: BlockDevice;
  let thin: ThinLeg | undefined;
  let remote: RemoteLeg | undefined;
  if (leg.remote) {
    remote = await RemoteLeg.connect({ address: leg.remote.address, name: options.name ?? leg.path, usableSizeBytes: sizeBytes,
      requestTimeoutMs: leg.remote.failfastMs, connectTimeoutMs: leg.remote.connectTimeoutMs, connections: leg.remote.connections,
      readOnly: options.readOnly }, leg.remote.tls);
    device = remote;
  } else if (leg.thin) {
    if (options.createSizeBytes !== undefined && !fs.existsSync(leg.path)) {
      ThinLeg.create(leg.path, { virtualSizeBytes: options.createSizeBytes, poolBytes: leg.thin.poolBytes, chunkSizeBytes: leg.thin.chunkSizeBytes });
      logger.info({ path: leg.path, poolBytes: leg.thin.poolBytes }, 'created a thin pool');
    }
    thin = await ThinLeg.open({
      path: leg.path,
      readOnly: options.readOnly,
      lowWaterBytes: leg.thin.lowWaterBytes,
      onLowWater: (event) => {
        if (event.below) logger.warn(event, 'thin pool below its low-water mark: grow it (nbd-mirror pool grow) before it fills');
        else logger.info(event, 'thin pool back above its low-water mark');
        options.events?.({ event: 'low-water', ...event });
      },
    });
    if (sizeBytes !== undefined && thin.sizeBytes !== sizeBytes) {
      await thin.close();
      throw new Error(`thin pool ${leg.path} is ${thin.sizeBytes} bytes, but the device is ${sizeBytes}`);
    }
    device = thin;
  } else {
    device = await FileLeg.open({ path: leg.path, readOnly: options.readOnly, usableSizeBytes: sizeBytes,
      createSizeBytes: options.createSizeBytes });
  }
  const name = options.name ?? leg.path;
  // Checked at each link: the leg itself, and the top of the crash toolkit's devices over it.
  const wrapped = await wrapDevice(CheckedDevice.wrap(device, name), leg, name, options.powerCuts ?? new PowerCutRegistry());
  return { ...wrapped, device: CheckedDevice.wrap(wrapped.device, name), thin, remote };
}
