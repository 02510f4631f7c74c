import type { BlockDevice } from '../blockdev/types.js';

export interface CompareResult {
  regionsCompared: number;
  mismatchedRegions: number[];
  bytesCompared: number;
  legsCompared: number[];
}

export interface CompareTarget {
  sizeBytes: number;
  regionSizeBytes: number;
  legs: Array<{ slot: number; device: BlockDevice }>;
  /** Online: hold the region lock while reading, so a write cannot look like a mismatch. */
  lock?: (region: number) => Promise<void>;
  unlock?: (region: number) => void;
}

const chunkBytes = 1 << 20;

/** Reads every region from every leg and lists the regions where any leg differs from the first. */
export async function compareRegions(target: CompareTarget, onProgress?: (done: number, total: number) => void):
  Promise<CompareResult> {
  const regionCount = Math.ceil(target.sizeBytes / target.regionSizeBytes);
  const buffers = target.legs.map(() => Buffer.alloc(Math.min(chunkBytes, target.regionSizeBytes)));
  const mismatchedRegions: number[] = [];
  let bytesCompared = 0;
  for (let region = 0; region < regionCount; region += 1) {
    const start = region * target.regionSizeBytes;
    const end = Math.min(start + target.regionSizeBytes, target.sizeBytes);
    await target.lock?.(region);
    try {
      let differs = false;
      for (let at = start; at < end && !differs; at += chunkBytes) {
        const length = Math.min(chunkBytes, end - at);
        const views = buffers.map((buffer) => buffer.subarray(0, length));
        await Promise.all(target.legs.map((leg, index) => leg.device.read(at, views[index])));
        differs = views.some((view) => !view.equals(views[0]));
        bytesCompared += length;
      }
      if (differs) mismatchedRegions.push(region);
    } finally {
      target.unlock?.(region);
    }
    if (onProgress && (region % 16 === 15 || region === regionCount - 1)) onProgress(region + 1, regionCount);
  }
  return { regionsCompared: regionCount, mismatchedRegions, bytesCompared, legsCompared: target.legs.map((leg) => leg.slot) };
}
