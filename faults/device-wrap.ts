import { FaultDevice, type FaultPlan } from './fault-device.js';
import type { BlockDevice } from '../blockdev/types.js';
import { type CutPolicy, PowerCutDevice, type PowerCutRegistry } from './power-cut-device.js';
import { WriteLogDevice } from './write-log-device.js';

/** The crash toolkit's devices to slide under a leg or the region log, as configured. */
export interface DeviceWrap {
  faults?: FaultPlan;
  powerCut?: { policy: CutPolicy; seed: number; sectorBytes?: number };
  /** Path of a write log to record into (created, or appended to after a restart). */
  writeLog?: string;
}

export interface WrappedDevice {
  device: BlockDevice;
  fault?: FaultDevice;
  powerCut?: PowerCutDevice;
  writeLog?: WriteLogDevice;
}

/**
 * Stacks, from the bottom: the real device, the write log (so it records
 * exactly what the disk saw, rollbacks of a power cut included), the
 * power-cut model, then the fault rules nearest the layer above.
 */
export async function wrapDevice(device: BlockDevice, wrap: DeviceWrap | undefined, name: string,
  powerCuts: PowerCutRegistry): Promise<WrappedDevice> {
  const wrapped: WrappedDevice = { device };
  if (!wrap) return wrapped;
  if (wrap.writeLog) wrapped.device = wrapped.writeLog = await WriteLogDevice.open(wrapped.device, wrap.writeLog, name);
  if (wrap.powerCut) {
    const powerCut = new PowerCutDevice(wrapped.device, { name, ...wrap.powerCut, registry: powerCuts });
    const { writeLog } = wrapped;
    if (writeLog) powerCut.onCut = () => writeLog.markCut();
    wrapped.device = wrapped.powerCut = powerCut;
  }
  if (wrap.faults) wrapped.device = wrapped.fault = new FaultDevice(wrapped.device, wrap.faults);
  return wrapped;
}

export function wrapsAnything(wrap: DeviceWrap | undefined): boolean {
  return wrap !== undefined && (wrap.faults !== undefined || wrap.powerCut !== undefined || wrap.writeLog !== undefined);
}
