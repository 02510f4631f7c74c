/**
 * The one interface between layers. The NBD server, the page cache, the
 * mirror, each leg backend and the fault wrappers all implement it, so layers
 * stack like nbdkit filters. Every method rejects only with BlockError.
 *
 * Buffers: `read` fills a buffer the caller owns (so the NBD layer can read
 * straight into its reply buffer). `write` borrows `data`: the caller must not
 * modify it until the returned promise settles, and the callee must not keep a
 * reference after it settles.
 */
export interface WriteFlags {
  /** Forced unit access: durable before the promise resolves. */
  fua: boolean;
}

export interface ZeroFlags extends WriteFlags {
  /** Do not deallocate: the range must stay allocated (NBD_CMD_FLAG_NO_HOLE). */
  noHole: boolean;
  /** Fail with ENOTSUP rather than zero slowly (NBD_CMD_FLAG_FAST_ZERO). */
  fast: boolean;
}

export interface Extent {
  offsetBytes: number;
  lengthBytes: number;
  /** Unallocated: reads return zeroes and a write may need new space. */
  hole: boolean;
  /** Reads are known to return zeroes. */
  zero: boolean;
}

export interface DeviceCapabilities {
  readOnly: boolean;
  flush: boolean;
  fua: boolean;
  trim: boolean;
  writeZeroes: boolean;
  /** writeZeroes with fast=true can succeed (zeroing is cheap, not a write loop). */
  fastZero: boolean;
  blockStatus: boolean;
  /** Flush covers writes made through every connection sharing this device. */
  multiConn: boolean;
  rotational: boolean;
}

export interface BlockDevice {
  readonly sizeBytes: number;
  /** Smallest I/O unit the device accepts without read-modify-write. */
  readonly blockSizeBytes: number;
  readonly capabilities: DeviceCapabilities;
  read(offsetBytes: number, target: Buffer): Promise<void>;
  write(offsetBytes: number, data: Buffer, flags: WriteFlags): Promise<void>;
  flush(): Promise<void>;
  trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void>;
  writeZeroes(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void>;
  /** Extents covering [offsetBytes, offsetBytes + lengthBytes), in order, at least one. */
  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]>;
  /**
   * A device whose bytes for the range sit in one file, exactly as a read
   * would return them, may lend that file range so a large read reply is sent
   * with sendfile instead of being copied through a buffer. undefined: read.
   * The device must not close the descriptor until the lease is released.
   */
  lendFileRange?(offsetBytes: number, lengthBytes: number): FileRangeLease | undefined;
  close(): Promise<void>;
}

export interface FileRangeLease {
  fd: number;
  positionBytes: number;
  release(): void;
}

export const noFlags: WriteFlags = Object.freeze({ fua: false });

/**
 * What a device returns for an operation it finished before returning (a
 * small write copied into the page cache on the event loop). A layer above
 * may recognise it by identity and finish its own part in the same turn, so
 * a request stacked through several layers does not wait a microtask in
 * each; any other promise is awaited as usual.
 */
export const finishedNow: Promise<void> = Promise.resolve();
