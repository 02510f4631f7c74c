import assert from 'node:assert/strict';
import fs from 'node:fs';
import { BlockError, fromNegativeErrno, toBlockError } from '../blockdev/errors.js';
import { GroupCommit } from '../blockdev/group-commit.js';
import { type BlockDevice, type DeviceCapabilities, type Extent, type FileRangeLease, finishedNow, type WriteFlags, type ZeroFlags } from '../blockdev/types.js';
import { FileLock } from '../sys/file-lock.js';
import { closeFd, fdatasync, preadOrZeroes, pwriteAll, pwriteAllSync } from '../sys/fs-io.js';
import { InlineWriteGate } from './inline-write-gate.js';
import { KnownDataRange } from './known-data-range.js';
import { blockDeviceSize } from '../sys/device-size.js';
import {
  EAGAIN, ENXIO, EOPNOTSUPP, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE,
  native, SEEK_DATA, SEEK_HOLE,
} from '../sys/native.js';

export interface FileLegOptions {
  path: string;
  readOnly?: boolean;
  /** Create the file with this size if it does not exist. */
  createSizeBytes?: number;
  /**
   * Reads up to this size try the page cache from the event loop first
   * (preadv2 RWF_NOWAIT) and use the thread pool only on a miss. Larger reads
   * always go to the pool, where a long copy does not stall other clients.
   */
  inlineReadBytesMax?: number;
  /**
   * Non-FUA writes up to this size are written from the event loop, which
   * saves a thread-pool round trip (most of a 4 KiB write's CPU and latency:
   * 4k random writes at QD32 ran at 0.42x nbdkit through the pool,
   * 0.65-0.77x inline). After an inline write that stalls, writes go to the
   * pool for a while (see inline-write-gate.ts), so the event loop keeps
   * serving other clients while the kernel throttles writeback. Each
   * event-loop turn writes at most inlineTurnBytesMax inline, which bounds
   * how long a burst of large writes holds the loop.
   * Default 1 MiB: a 1 MiB copy into the page cache holds the loop about
   * 0.2 ms, and through the pool the hand-off to another thread and back cost
   * more than it saved on 2 vCPUs: 1 MiB sequential writes at QD8 ran 3-18%
   * faster inline in 6 of 6 side-by-side rounds (0.94-1.05x nbdkit through
   * the pool, 1.01-1.20x inline), and the mirror's 1 MiB writes 3-33% faster.
   */
  inlineWriteBytesMax?: number;
  /**
   * Expose only the first bytes of the file: a mirror leg keeps its label in
   * the last few KiB, beyond the data the device serves.
   */
  usableSizeBytes?: number;
}

/**
 * Inline bytes per leg per event-loop turn: 8 MiB, about 1-2 ms of copies
 * into the page cache. At 1 MiB a mirror's QD8 burst of 1 MiB writes sent
 * most of them to the pool, and on 2 vCPUs each hand-off woke a pool thread
 * that took the CPU from the loop (perf: a sixth of the cycles in context
 * switches); 64 KiB mixed I/O on the mirror ran 10-30% faster at 8 MiB in 5
 * of 5 side-by-side pairs; 1 MiB writes stayed within noise (0.8-1.15x in 6
 * pairs, with 7% less server CPU on the mirror without the cache).
 */
const inlineTurnBytesMax = 8 * 1024 * 1024;
const inlineWriteBytesMaxDefault = 1024 * 1024;

/** Zero-filling falls back to plain writes of this chunk size. */
const zeroChunkBytes = 1 << 20;
/** fallocate on a block device needs whole logical blocks: 4 KiB covers 512-byte and 4 KiB sectors. */
const blockDeviceZeroAlignBytes = 4096;
/** Bounds the work of one blockStatus call; the reply may then cover a prefix. */
const extentsPerCallMax = 4096;

/**
 * A leg backed by a regular file or a block device: positional I/O, flush as
 * fdatasync, trim and write-zeroes as hole punching or zero-range where the
 * filesystem allows it, block status from SEEK_DATA/SEEK_HOLE.
 */
export class FileLeg implements BlockDevice {
  readonly blockSizeBytes = 512;
  readonly capabilities: DeviceCapabilities;
  private readonly flushes: GroupCommit;
  private closed = false;
  /** Cleared when the filesystem refuses RWF_NOWAIT reads (tmpfs does). */
  private inlineReadsWork = native !== undefined;
  /** Cleared after the filesystem refuses fallocate once, so we stop asking. */
  private fallocateWorks = native !== undefined;
  private readonly inlineWrites = new InlineWriteGate();
  /** Bytes written inline in this event-loop turn; -1 when no turn is being counted. */
  private inlineBytesThisTurn = -1;
  /** File ranges lent for sendfile: close waits for them, so the descriptor is never reused under one. */
  private leasesOut = 0;
  private leasesReturned: Array<() => void> = [];
  /** Keeps other processes off the file while it is open (see FileLock). */
  private lock: FileLock | undefined;
  private readonly knownData = new KnownDataRange();

  private constructor(
    readonly path: string,
    private readonly fd: number,
    /** Opened O_DSYNC: a FUA write is one durable system call. */
    private readonly syncFd: number,
    readonly sizeBytes: number,
    readonly readOnly: boolean,
    private readonly inlineReadBytesMax: number,
    private readonly inlineWriteBytesMax: number,
    readonly isBlockDevice: boolean,
  ) {
    this.flushes = new GroupCommit(() => fdatasync(this.fd));
    this.capabilities = {
      readOnly,
      flush: true,
      fua: true,
      trim: true,
      writeZeroes: true,
      fastZero: native !== undefined,
      blockStatus: true,
      multiConn: true,
      rotational: false,
    };
  }

  static async open(options: FileLegOptions): Promise<FileLeg> {
    const readOnly = options.readOnly ?? false;
    if (options.createSizeBytes !== undefined && !fs.existsSync(options.path)) {
      assert(Number.isSafeInteger(options.createSizeBytes) && options.createSizeBytes > 0);
      const created = fs.openSync(options.path, 'wx');
      try {
        fs.ftruncateSync(created, options.createSizeBytes);
        fs.fsyncSync(created);
      } finally {
        fs.closeSync(created);
      }
    }
    let fd: number;
    try {
      // O_EXCL on a block device claims it as md and dm do: refused while it is mounted or claimed, and
      // nothing can mount it while we serve it. Other programs take no file lock, so this is the guard.
      const claim = !readOnly && fs.statSync(options.path).isBlockDevice() ? fs.constants.O_EXCL : 0;
      fd = fs.openSync(options.path, (readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR) | claim);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EBUSY') {
        throw new BlockError('EBUSY', `leg ${options.path} is in use: the kernel reports the block device busy ` +
          '(mounted, part of an md or dm device, or claimed by another program)', { cause: error });
      }
      throw toBlockError(error, `cannot open leg ${options.path}`);
    }
    let lock: FileLock | undefined;
    try {
      lock = FileLock.acquire(options.path, readOnly ? 'shared' : 'exclusive', 'leg');
      const stat = fs.fstatSync(fd);
      if (!stat.isFile() && !stat.isBlockDevice()) {
        throw new BlockError('EINVAL', `${options.path} is neither a regular file nor a block device`);
      }
      const fileSizeBytes = stat.isBlockDevice() ? blockDeviceSize(fd, options.path) : stat.size;
      const sizeBytes = options.usableSizeBytes ?? fileSizeBytes;
      if (sizeBytes <= 0) throw new BlockError('EINVAL', `${options.path} is empty`);
      if (sizeBytes > fileSizeBytes) {
        throw new BlockError('EINVAL', `${options.path} is ${fileSizeBytes} bytes, smaller than the ${sizeBytes} it must hold`);
      }
      const syncFd = readOnly ? fd : fs.openSync(options.path, fs.constants.O_RDWR | fs.constants.O_DSYNC);
      const leg = new FileLeg(options.path, fd, syncFd, sizeBytes, readOnly,
        options.inlineReadBytesMax ?? 65536, options.inlineWriteBytesMax ?? inlineWriteBytesMaxDefault, stat.isBlockDevice());
      leg.lock = lock;
      return leg;
    } catch (error) {
      fs.closeSync(fd);
      lock?.release();
      throw toBlockError(error, `cannot open leg ${options.path}`);
    }
  }

  read(offsetBytes: number, target: Buffer): Promise<void> {
    let done = 0;
    try {
      this.checkOpen('read');
      if (this.inlineReadsWork && target.length <= this.inlineReadBytesMax) {
        const result = native!.preadNoWait(this.fd, target, offsetBytes);
        // Not an async function: a page-cache hit settles without allocating a promise.
        if (result === target.length) return finishedNow;
        // tmpfs and some other filesystems refuse RWF_NOWAIT: read through the thread pool from now on.
        if (result === -EOPNOTSUPP) this.inlineReadsWork = false;
        else if (result < 0 && result !== -EAGAIN) throw fromNegativeErrno(result, `read ${this.path} at ${offsetBytes}`);
        done = Math.max(result, 0);
      }
    } catch (error) {
      return Promise.reject(error);
    }
    return this.readRest(offsetBytes, target, done);
  }

  /** The part of a read the page cache did not have, through the thread pool. */
  private async readRest(offsetBytes: number, target: Buffer, done: number): Promise<void> {
    try {
      // A file shorter than the device (truncated behind our back) reads as zeroes.
      await preadOrZeroes(this.fd, target, done, offsetBytes + done);
    } catch (error) {
      throw toBlockError(error, `read ${this.path} at ${offsetBytes}`);
    }
  }

  write(offsetBytes: number, data: Buffer, flags: WriteFlags): Promise<void> {
    try {
      this.checkWritable('write');
      if (!flags.fua && data.length <= this.inlineWriteBytesMax && this.inlineBytesThisTurn < inlineTurnBytesMax) {
        const startedMs = performance.now();
        if (this.inlineWrites.open(startedMs)) {
          this.writeInline(offsetBytes, data, startedMs);
          // Not an async function: a write done inline settles without allocating a promise.
          return finishedNow;
        }
      }
    } catch (error) {
      return Promise.reject(error);
    }
    return pwriteAll(flags.fua ? this.syncFd : this.fd, data, offsetBytes)
      .catch((error: unknown) => { throw toBlockError(error, `write ${this.path} at ${offsetBytes}`); });
  }

  private writeInline(offsetBytes: number, data: Buffer, startedMs: number): void {
    if (this.inlineBytesThisTurn < 0) {
      this.inlineBytesThisTurn = 0;
      setImmediate(() => { this.inlineBytesThisTurn = -1; });
    }
    this.inlineBytesThisTurn += data.length;
    try {
      pwriteAllSync(this.fd, data, offsetBytes);
    } catch (error) {
      throw toBlockError(error, `write ${this.path} at ${offsetBytes}`);
    }
    const finishedMs = performance.now();
    this.inlineWrites.record(finishedMs - startedMs, finishedMs);
  }

  async flush(): Promise<void> {
    this.checkOpen('flush');
    if (this.readOnly) return;
    try {
      await this.flushes.run();
    } catch (error) {
      // After a failed fdatasync the kernel may have dropped the dirty pages it
      // could not write (even for ENOSPC from delayed allocation), so the next
      // fdatasync can succeed over lost data: never report this as retryable.
      throw new BlockError('EIO', `flush ${this.path}: ${(error as Error).message}`, { retryable: false, cause: error });
    }
  }

  async trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void> {
    this.checkWritable('trim');
    // Trimmed blocks read back as zeroes either way, so the fallback is a zero write.
    await this.zeroRange(offsetBytes, lengthBytes, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, false);
    if (flags.fua) await this.flush();
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    this.checkWritable('write-zeroes');
    const mode = flags.noHole ? FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE : FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    await this.zeroRange(offsetBytes, lengthBytes, mode, flags.fast);
    if (flags.fua) await this.flush();
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    this.checkOpen('block-status');
    assert(lengthBytes > 0, 'block-status of an empty range');
    const endBytes = offsetBytes + lengthBytes;
    // A block device has no SEEK_DATA (lseek says EINVAL): like the portable build, all of it is data.
    if (native === undefined || this.isBlockDevice || this.knownData.covers(offsetBytes, lengthBytes)) {
      return [{ offsetBytes, lengthBytes, hole: false, zero: false }];
    }
    const extents: Extent[] = [];
    let position = offsetBytes;
    while (position < endBytes && extents.length < extentsPerCallMax) {
      const dataStart = native.seek(this.fd, position, SEEK_DATA);
      if (dataStart === -ENXIO) {
        pushExtent(extents, position, endBytes, true);
        break;
      }
      if (dataStart < 0) throw fromNegativeErrno(dataStart, `block-status ${this.path}`);
      if (dataStart > position) {
        const holeEnd = Math.min(dataStart, endBytes);
        pushExtent(extents, position, holeEnd, true);
        position = holeEnd;
        continue;
      }
      const holeStart = native.seek(this.fd, position, SEEK_HOLE);
      if (holeStart < 0) throw fromNegativeErrno(holeStart, `block-status ${this.path}`);
      assert(holeStart > position, 'SEEK_HOLE went backwards');
      this.knownData.learn(position, holeStart);
      const dataEnd = Math.min(holeStart, endBytes);
      pushExtent(extents, position, dataEnd, false);
      position = dataEnd;
    }
    assert(extents.length > 0 && extents[0].offsetBytes === offsetBytes);
    return extents;
  }

  lendFileRange(offsetBytes: number, lengthBytes: number): FileRangeLease | undefined {
    if (this.closed || native?.sendFileAsync === undefined) return undefined;
    this.leasesOut += 1;
    let released = false;
    return {
      fd: this.fd,
      positionBytes: offsetBytes,
      release: () => {
        assert(!released, 'file range lease released twice');
        released = true;
        this.leasesOut -= 1;
        if (this.leasesOut === 0) for (const waiter of this.leasesReturned.splice(0)) waiter();
      },
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.leasesOut > 0) await new Promise<void>((resolve) => this.leasesReturned.push(resolve));
    if (this.syncFd !== this.fd) await closeFd(this.syncFd);
    await closeFd(this.fd);
    this.lock?.release();
  }

  private async zeroRange(offsetBytes: number, lengthBytes: number, mode: number, fast: boolean): Promise<void> {
    if (lengthBytes === 0) return;
    this.knownData.forget();
    try {
      await this.fallocateOrWriteZeroes(offsetBytes, lengthBytes, mode, fast);
    } finally {
      this.knownData.forget();
    }
  }

  private async fallocateOrWriteZeroes(offsetBytes: number, lengthBytes: number, mode: number, fast: boolean): Promise<void> {
    const endBytes = offsetBytes + lengthBytes;
    if (this.fallocateWorks && native !== undefined) {
      // A block device takes fallocate on whole logical blocks only (EINVAL otherwise, which would turn
      // every later trim into a data write): the unaligned ends are written as zeroes.
      const align = this.isBlockDevice ? blockDeviceZeroAlignBytes : 1;
      const start = Math.ceil(offsetBytes / align) * align;
      const end = Math.floor(endBytes / align) * align;
      if (end <= start) return this.writeZeroBytes(offsetBytes, lengthBytes);
      const result = await new Promise<number>((resolve) =>
        native!.fallocateAsync(this.fd, mode, start, end - start, resolve));
      if (result === 0) {
        await this.writeZeroBytes(offsetBytes, start - offsetBytes);
        await this.writeZeroBytes(end, endBytes - end);
        return undefined;
      }
      if (result !== -95 && result !== -22) {
        throw fromNegativeErrno(result, `zero ${this.path} at ${start} length ${end - start}`);
      }
      // EOPNOTSUPP/EINVAL: this filesystem or device cannot punch or zero ranges.
      this.fallocateWorks = false;
    }
    if (fast) throw new BlockError('ENOTSUP', `fast zeroing is not supported by ${this.path}`);
    return this.writeZeroBytes(offsetBytes, lengthBytes);
  }

  private async writeZeroBytes(offsetBytes: number, lengthBytes: number): Promise<void> {
    if (lengthBytes === 0) return;
    const zeroes = Buffer.alloc(Math.min(zeroChunkBytes, lengthBytes));
    for (let done = 0; done < lengthBytes; done += zeroes.length) {
      const chunk = Math.min(zeroes.length, lengthBytes - done);
      try {
        await pwriteAll(this.fd, zeroes.subarray(0, chunk), offsetBytes + done);
      } catch (error) {
        throw toBlockError(error, `zero ${this.path} at ${offsetBytes + done}`);
      }
    }
  }

  private checkOpen(what: string): void {
    if (this.closed) throw new BlockError('ESHUTDOWN', `${what}: leg ${this.path} is closed`);
  }

  private checkWritable(what: string): void {
    this.checkOpen(what);
    if (this.readOnly) throw new BlockError('EPERM', `${what}: leg ${this.path} is read-only`);
  }
}

function pushExtent(extents: Extent[], startBytes: number, endBytes: number, hole: boolean): void {
  if (endBytes <= startBytes) return;
  const last = extents[extents.length - 1];
  if (last !== undefined && last.hole === hole && last.offsetBytes + last.lengthBytes === startBytes) {
    last.lengthBytes += endBytes - startBytes;
    return;
  }
  extents.push({ offsetBytes: startBytes, lengthBytes: endBytes - startBytes, hole, zero: hole });
}

