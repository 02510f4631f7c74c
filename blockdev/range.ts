import assert from 'node:assert/strict';
import { BlockError } from './errors.js';

/**
 * Re-asserts at each layer boundary what the NBD layer validated at the edge:
 * a range inside the device. Failing here is a programming error upstream,
 * but it must never turn into an out-of-bounds write, so it is an EINVAL.
 */
export function checkRange(sizeBytes: number, offsetBytes: number, lengthBytes: number, what: string): void {
  assert(Number.isSafeInteger(sizeBytes) && sizeBytes >= 0);
  if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0 ||
      !Number.isSafeInteger(lengthBytes) || lengthBytes < 0 ||
      offsetBytes + lengthBytes > sizeBytes) {
    throw new BlockError('EINVAL',
      `${what}: range offset=${offsetBytes} length=${lengthBytes} is outside the device (size ${sizeBytes})`);
  }
}

export function alignDown(value: number, alignment: number): number {
  return value - (value % alignment);
}

export function alignUp(value: number, alignment: number): number {
  const remainder = value % alignment;
  return remainder === 0 ? value : value + alignment - remainder;
}
