import assert from 'node:assert/strict';
import { BlockError } from './errors.js';
import type { BlockDevice, DeviceCapabilities, Extent, FileRangeLease, WriteFlags, ZeroFlags } from './types.js';

/**
 * The one checked entry into a layer, as nbdkit's backend.c is for every
 * plugin and filter: whoever composes a stack puts one of these in front of
 * each layer, and no layer re-checks what it was handed. The NBD layer has
 * already refused bad client requests with their own NBD errors; a bad call
 * arriving here is a bug in the layer above (resync, a tool, a filter), so
 * it is refused as a value (EINVAL, EROFS) and never reaches a disk as an
 * out-of-bounds write. What the stack hands back for block status is
 * asserted where it leaves (assertExtentsTile, below).
 *
 * The wrapper adds one call and a few comparisons per operation and returns
 * the layer's own promise, so `finishedNow` keeps its identity for the layer
 * above (see types.ts).
 */
export class CheckedDevice implements BlockDevice {
  // Copied once: the BlockDevice contract makes them fixed for a device's life.
  readonly sizeBytes: number;
  readonly blockSizeBytes: number;
  readonly capabilities: DeviceCapabilities;
  readonly lendFileRange?: (offsetBytes: number, lengthBytes: number) => FileRangeLease | undefined;

  private constructor(readonly inner: BlockDevice, readonly name: string) {
    this.sizeBytes = inner.sizeBytes;
    this.blockSizeBytes = inner.blockSizeBytes;
    this.capabilities = inner.capabilities;
    if (!(Number.isSafeInteger(this.sizeBytes) && this.sizeBytes >= 0)) assert.fail(`${name}: size ${this.sizeBytes} is not a byte count`);
    if (inner.lendFileRange !== undefined) {
      this.lendFileRange = (offsetBytes, lengthBytes) => {
        if (!this.inRange(offsetBytes, lengthBytes)) assert.fail(`${name}: lendFileRange ${offsetBytes}+${lengthBytes} outside the device`);
        return inner.lendFileRange!(offsetBytes, lengthBytes);
      };
    }
  }

  /** `device` behind a checked entry (itself, when it already is one). */
  static wrap(device: BlockDevice, name: string): BlockDevice {
    return device instanceof CheckedDevice ? device : new CheckedDevice(device, name);
  }

  // Each operation tests the good case inline and builds a message only when refusing.

  read(offsetBytes: number, target: Buffer): Promise<void> {
    if (Buffer.isBuffer(target) && this.inRange(offsetBytes, target.length)) return this.inner.read(offsetBytes, target);
    if (!Buffer.isBuffer(target)) return this.refuse('EINVAL', 'read: the target is not a buffer');
    return this.refuse('EINVAL', `read: ${this.rangeProblem(offsetBytes, target.length)}`);
  }

  write(offsetBytes: number, data: Buffer, flags: WriteFlags): Promise<void> {
    if (Buffer.isBuffer(data) && this.changeAllowed(offsetBytes, data.length, flags)) return this.inner.write(offsetBytes, data, flags);
    if (!Buffer.isBuffer(data)) return this.refuse('EINVAL', 'write: the data is not a buffer');
    return this.refuseChange('write', offsetBytes, data.length, flags);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void> {
    if (this.changeAllowed(offsetBytes, lengthBytes, flags)) return this.inner.trim(offsetBytes, lengthBytes, flags);
    return this.refuseChange('trim', offsetBytes, lengthBytes, flags);
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    if (this.changeAllowed(offsetBytes, lengthBytes, flags) && typeof flags.noHole === 'boolean' && typeof flags.fast === 'boolean') {
      return this.inner.writeZeroes(offsetBytes, lengthBytes, flags);
    }
    if (this.changeAllowed(offsetBytes, lengthBytes, flags)) return this.refuse('EINVAL', 'write-zeroes: noHole and fast must be booleans');
    return this.refuseChange('write-zeroes', offsetBytes, lengthBytes, flags);
  }

  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    if (this.inRange(offsetBytes, lengthBytes)) return this.inner.blockStatus(offsetBytes, lengthBytes);
    return this.refuse('EINVAL', `block-status: ${this.rangeProblem(offsetBytes, lengthBytes)}`);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  private inRange(offsetBytes: number, lengthBytes: number): boolean {
    return Number.isSafeInteger(offsetBytes) && offsetBytes >= 0 && Number.isSafeInteger(lengthBytes) && lengthBytes >= 0 &&
      offsetBytes + lengthBytes <= this.sizeBytes;
  }

  private changeAllowed(offsetBytes: number, lengthBytes: number, flags: WriteFlags): boolean {
    return !this.capabilities.readOnly && typeof flags?.fua === 'boolean' && this.inRange(offsetBytes, lengthBytes);
  }

  private refuseChange(what: string, offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<never> {
    if (this.capabilities.readOnly) return this.refuse('EROFS', `${what}: the device is read-only`);
    if (typeof flags?.fua !== 'boolean') return this.refuse('EINVAL', `${what}: the flags must say fua true or false`);
    return this.refuse('EINVAL', `${what}: ${this.rangeProblem(offsetBytes, lengthBytes)}`);
  }

  private rangeProblem(offsetBytes: number, lengthBytes: number): string {
    return `range offset=${offsetBytes} length=${lengthBytes} is outside the device (size ${this.sizeBytes})`;
  }

  private refuse(code: 'EINVAL' | 'EROFS', message: string): Promise<never> {
    return Promise.reject(new BlockError(code, `${this.name}: ${message}`));
  }
}

/**
 * What a device hands back for block status must tile the asked range: at
 * least one extent, the first at the asked offset, each non-empty and
 * following the one before, none past the device's end (a list may stop
 * short of the asked length, as NBD allows, or run past it up to the end).
 * Checked where the answer leaves the stack (nbd/read-replies.ts): a list
 * that does not tile is a lower layer's bug, and an assertion, on in
 * production, because passing it on would be a lie on the wire. Checked
 * there once rather than at every link, where each check would cost every
 * block-status call a promise hop per layer.
 */
export function assertExtentsTile(extents: readonly Extent[], offsetBytes: number, lengthBytes: number, sizeBytes: number): void {
  if (extents.length === 0 && lengthBytes > 0) assert.fail(`block status of ${lengthBytes} bytes at ${offsetBytes} returned no extent`);
  let next = offsetBytes;
  for (const extent of extents) {
    if (extent.offsetBytes !== next || !(extent.lengthBytes > 0)) {
      assert.fail(`block status extent at ${extent.offsetBytes}+${extent.lengthBytes} does not follow ${next}`);
    }
    next += extent.lengthBytes;
  }
  if (next > sizeBytes) assert.fail(`block status runs to ${next}, past the end (${sizeBytes})`);
}
