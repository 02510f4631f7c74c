import type { Extent } from '../blockdev/types.js';

/**
 * Marks byte ranges as data in a list of extents: a page that is dirty in the
 * cache is data even where the device below still has a hole. `dataRanges`
 * are sorted, non-overlapping [start, end) pairs.
 */
export function overlayData(extents: Extent[], dataRanges: Array<[number, number]>): Extent[] {
  if (dataRanges.length === 0) return extents;
  const result: Extent[] = [];
  const push = (offsetBytes: number, endBytes: number, hole: boolean, zero: boolean): void => {
    if (endBytes <= offsetBytes) return;
    const last = result[result.length - 1];
    if (last && last.hole === hole && last.zero === zero && last.offsetBytes + last.lengthBytes === offsetBytes) {
      last.lengthBytes += endBytes - offsetBytes;
    } else {
      result.push({ offsetBytes, lengthBytes: endBytes - offsetBytes, hole, zero });
    }
  };
  let rangeIndex = 0;
  for (const extent of extents) {
    const end = extent.offsetBytes + extent.lengthBytes;
    let at = extent.offsetBytes;
    while (rangeIndex < dataRanges.length && dataRanges[rangeIndex][1] <= at) rangeIndex += 1;
    for (let index = rangeIndex; at < end && index < dataRanges.length; index += 1) {
      const [start, stop] = dataRanges[index];
      if (start >= end) break;
      push(at, Math.max(at, start), extent.hole, extent.zero);
      at = Math.max(at, start);
      const dataEnd = Math.min(stop, end);
      push(at, dataEnd, false, false);
      at = Math.max(at, dataEnd);
    }
    push(at, end, extent.hole, extent.zero);
  }
  return result;
}
