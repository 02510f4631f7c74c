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
 * out-of-bounds write. What a layer hands back is checked too: an extent
 * list that does not tile the asked range is the lower layer's bug, and it
 * is an assertion, on in production, because passing it up would be a lie
 * on the wire.
 *
 * The wrapper adds one call and a few comparisons per operation and returns
 * the layer's own promise, so `finishedNow` keeps its identity for the layer
 * above (see types.ts).
 */
export class CheckedDevice implements BlockDevice {
  readonly lendFileRange?: (offsetBytes: number, lengthBytes: number) => FileRangeLease | undefined;

  private constructor(readonly inner: BlockDevice, readonly name: string) {
    if (inner.lendFileRange !== undefined) {
      this.lendFileRange = (offsetBytes, lengthBytes) => {
        assert(this.rangeProblem(offsetBytes, lengthBytes) === undefined, `${name}: lendFileRange outside the device`);
        return inner.lendFileRange!(offsetBytes, lengthBytes);
      };
    }
  }

  /** `device` behind a checked entry (itself, when it already is one). */
  static wrap(device: BlockDevice, name: string): BlockDevice {
    return device instanceof CheckedDevice ? device : new CheckedDevice(device, name);
  }

  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }

  get blockSizeBytes(): number {
    return this.inner.blockSizeBytes;
  }

  get capabilities(): DeviceCapabilities {
    return this.inner.capabilities;
  }

  read(offsetBytes: number, target: Buffer): Promise<void> {
    if (!Buffer.isBuffer(target)) return this.refuse('EINVAL', 'read: the target is not a buffer');
    const problem = this.rangeProblem(offsetBytes, target.length);
    return problem === undefined ? this.inner.read(offsetBytes, target) : this.refuse('EINVAL', `read: ${problem}`);
  }

  write(offsetBytes: number, data: Buffer, flags: WriteFlags): Promise<void> {
    if (!Buffer.isBuffer(data)) return this.refuse('EINVAL', 'write: the data is not a buffer');
    const problem = this.mutationProblem('write', offsetBytes, data.length, flags);
    return problem === undefined ? this.inner.write(offsetBytes, data, flags) : problem;
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void> {
    const problem = this.mutationProblem('trim', offsetBytes, lengthBytes, flags);
    return problem === undefined ? this.inner.trim(offsetBytes, lengthBytes, flags) : problem;
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    const problem = this.mutationProblem('write-zeroes', offsetBytes, lengthBytes, flags)
      ?? (typeof flags.noHole === 'boolean' && typeof flags.fast === 'boolean'
        ? undefined : this.refuse('EINVAL', 'write-zeroes: noHole and fast must be booleans'));
    return problem === undefined ? this.inner.writeZeroes(offsetBytes, lengthBytes, flags) : problem;
  }

  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    const problem = this.rangeProblem(offsetBytes, lengthBytes);
    if (problem !== undefined) return this.refuse('EINVAL', `block-status: ${problem}`);
    return this.inner.blockStatus(offsetBytes, lengthBytes).then((extents) => {
      this.assertTiles(extents, offsetBytes, lengthBytes);
      return extents;
    });
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  private mutationProblem(what: string, offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<never> | undefined {
    if (this.inner.capabilities.readOnly) return this.refuse('EROFS', `${what}: the device is read-only`);
    if (typeof flags?.fua !== 'boolean') return this.refuse('EINVAL', `${what}: the flags must say fua true or false`);
    const problem = this.rangeProblem(offsetBytes, lengthBytes);
    return problem === undefined ? undefined : this.refuse('EINVAL', `${what}: ${problem}`);
  }

  private rangeProblem(offsetBytes: number, lengthBytes: number): string | undefined {
    const { sizeBytes } = this.inner;
    assert(Number.isSafeInteger(sizeBytes) && sizeBytes >= 0, `${this.name}: size ${sizeBytes} is not a byte count`);
    if (Number.isSafeInteger(offsetBytes) && offsetBytes >= 0 && Number.isSafeInteger(lengthBytes) && lengthBytes >= 0 &&
        offsetBytes + lengthBytes <= sizeBytes) return undefined;
    return `range offset=${offsetBytes} length=${lengthBytes} is outside the device (size ${sizeBytes})`;
  }

  /**
   * At least one extent, the first at the asked offset, each non-empty and
   * following the one before, none past the device's end. A list may stop
   * short of the asked length (NBD allows fewer) or run past it (up to the end).
   */
  private assertTiles(extents: Extent[], offsetBytes: number, lengthBytes: number): void {
    assert(extents.length > 0 || lengthBytes === 0, `${this.name}: block status of ${lengthBytes} bytes at ${offsetBytes} returned no extent`);
    let next = offsetBytes;
    for (const extent of extents) {
      assert(extent.offsetBytes === next && extent.lengthBytes > 0,
        `${this.name}: block status extent at ${extent.offsetBytes}+${extent.lengthBytes} does not follow ${next}`);
      next += extent.lengthBytes;
    }
    assert(next <= this.inner.sizeBytes, `${this.name}: block status runs to ${next}, past the end (${this.inner.sizeBytes})`);
  }

  private refuse(code: 'EINVAL' | 'EROFS', message: string): Promise<never> {
    return Promise.reject(new BlockError(code, `${this.name}: ${message}`));
  }
}
