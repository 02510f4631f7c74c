import fs from 'node:fs';
import { BlockError, toBlockError } from '../blockdev/errors.js';
import { GroupCommit } from '../blockdev/group-commit.js';
import type { BlockDevice, DeviceCapabilities, Extent, WriteFlags, ZeroFlags } from '../blockdev/types.js';
import { FileLock } from '../sys/file-lock.js';
import { closeFd, fdatasync, preadAll, pwriteAll } from '../sys/fs-io.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, native } from '../sys/native.js';
import { ChunkAllocator, type LowWaterEvent } from './thin-allocator.js';
import {
  blockBytes, encodeSuperblock, geometryOf, readSuperblock, type ThinGeometry, type ThinSuperblock,
} from './thin-format.js';
import { createThinPool, refuseBlockDevice, type ThinCreateOptions } from './thin-create.js';
import { ThinMap } from './thin-map.js';

export { defaultChunkBytes, type ThinCreateOptions } from './thin-create.js';

export interface ThinOpenOptions {
  path: string;
  /** For offline tools: the file is opened read-only and every change is refused. */
  readOnly?: boolean;
  /** Below this much free space a warning is logged (once per crossing) and status shows it. */
  lowWaterBytes?: number;
  onLowWater?: (event: LowWaterEvent) => void;
}

export interface PoolUsage {
  path: string;
  chunkSizeBytes: number;
  capacityBytes: number;
  usedBytes: number;
  freeBytes: number;
  virtualSizeBytes: number;
  lowWaterBytes: number;
  belowLowWater: boolean;
}

/** A new capacity, or how much to add to the current one. */
export interface PoolGrowth {
  toBytes?: number;
  byBytes?: number;
}

const extentsPerCallMax = 4096;

/**
 * A thin-provisioned leg: a virtual device of fixed size whose chunks get
 * space in a pool only when first written. The pool has a capacity; a write
 * that needs a new chunk when it is full fails with ENOSPC (retryable: grow
 * the pool and retry), never with silent loss.
 *
 * Crash safety (docs/thin-pool.md): a new chunk is written in full (zeroes
 * around the data) before its mapping exists; a flush makes data durable
 * before the map pages that point at it; a chunk freed by trim is not reused
 * until the map that frees it is durable and no I/O still holds it.
 */
export class ThinLeg implements BlockDevice {
  readonly blockSizeBytes = 512;
  readonly sizeBytes: number;
  readonly capabilities: DeviceCapabilities;
  private static readonly writableCapabilities: DeviceCapabilities = {
    readOnly: false, flush: true, fua: true, trim: true, writeZeroes: true, fastZero: true, blockStatus: true,
    multiConn: true, rotational: false,
  };
  private superblock: ThinSuperblock;
  private readonly geometry: ThinGeometry;
  private readonly chunkBytes: number;
  private readonly chunkMap: ThinMap;
  private readonly chunks: ChunkAllocator;
  private readonly allocating = new Map<number, Promise<void>>();
  private readonly commits: GroupCommit;
  private superblockWrites: Promise<void> = Promise.resolve();
  private closed = false;
  /** Keeps other processes off the pool file while it is open (see FileLock). */
  private lock: FileLock | undefined;
  private zeroChunk: Buffer | undefined;

  private constructor(readonly path: string, private readonly fd: number, superblock: ThinSuperblock,
    map: ThinMap, private readonly options: ThinOpenOptions) {
    this.superblock = superblock;
    this.chunkBytes = superblock.chunkSizeBytes;
    this.sizeBytes = superblock.virtualSizeBytes;
    this.geometry = geometryOf(superblock.virtualSizeBytes, superblock.chunkSizeBytes);
    this.chunkMap = map;
    this.chunks = new ChunkAllocator(superblock.capacityChunks, map.entries, { path, chunkBytes: this.chunkBytes,
      lowWaterBytes: options.lowWaterBytes ?? 0, onLowWater: options.onLowWater });
    this.capabilities = ThinLeg.writableCapabilities;
    this.commits = new GroupCommit(() => this.commitMap());
    if (options.readOnly) this.capabilities = { ...this.capabilities, readOnly: true };
  }

  /** Refused before the first write: a device cannot be sized as the pool's file is, by truncation. */
  static refuseBlockDevice(path: string): void {
    refuseBlockDevice(path);
  }

  /** Creates an empty pool file (see thin-create.ts). */
  static create(path: string, options: ThinCreateOptions): ThinSuperblock {
    return createThinPool(path, options);
  }

  /** Reads the superblock and the newest valid copy of every map page; refuses a damaged map. */
  static async open(options: ThinOpenOptions): Promise<ThinLeg> {
    let fd: number;
    try {
      fd = fs.openSync(options.path, options.readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR);
    } catch (error) {
      throw toBlockError(error, `cannot open thin pool ${options.path}`);
    }
    let lock: FileLock | undefined;
    try {
      lock = FileLock.acquire(options.path, options.readOnly ? 'shared' : 'exclusive', 'thin pool');
      const { superblock, map } = ThinMap.read(fd, options.path);
      const pool = new ThinLeg(options.path, fd, superblock, map, options);
      pool.lock = lock;
      return pool;
    } catch (error) {
      fs.closeSync(fd);
      lock?.release();
      throw error;
    }
  }

  /** Superblock of a pool file, or why it is not one. */
  static inspect(path: string): ThinSuperblock | string {
    const fd = fs.openSync(path, 'r');
    try {
      return readSuperblock(fd);
    } finally {
      fs.closeSync(fd);
    }
  }

  usage(): PoolUsage {
    const capacityBytes = this.superblock.capacityChunks * this.chunkBytes;
    const usedBytes = this.chunks.usedChunks * this.chunkBytes;
    return {
      path: this.path,
      chunkSizeBytes: this.chunkBytes,
      capacityBytes,
      usedBytes,
      freeBytes: capacityBytes - usedBytes,
      virtualSizeBytes: this.sizeBytes,
      lowWaterBytes: this.options.lowWaterBytes ?? 0,
      belowLowWater: this.chunks.isBelowLowWater,
    };
  }

  /**
   * Raises the pool's capacity online, to `toBytes` or by `byBytes`. Only a
   * number in a new superblock changes: requests in flight keep the chunks
   * they hold, and the next allocation sees the new capacity (lesson 4).
   * Grows run one at a time and `byBytes` is added to the capacity the grow
   * finds, so two concurrent grows both count.
   */
  grow(size: PoolGrowth): Promise<PoolUsage> {
    const run = async (): Promise<PoolUsage> => {
      this.checkWritable('grow');
      const current = this.superblock;
      const newCapacityBytes = size.toBytes ?? current.capacityChunks * this.chunkBytes + (size.byBytes ?? 0);
      const capacityChunks = Math.floor(newCapacityBytes / this.chunkBytes);
      if (capacityChunks < current.capacityChunks) {
        throw new BlockError('EINVAL', `pool ${this.path} holds ${current.capacityChunks * this.chunkBytes} bytes; it cannot shrink to ${newCapacityBytes}`);
      }
      if (capacityChunks > this.geometry.chunkCount) {
        throw new BlockError('EINVAL', `pool ${this.path} cannot exceed its virtual size ${this.sizeBytes} (asked ${newCapacityBytes})`);
      }
      if (capacityChunks === current.capacityChunks) return this.usage();
      const next: ThinSuperblock = { ...current, sequence: current.sequence + 1n, capacityChunks };
      try {
        fs.ftruncateSync(this.fd, this.geometry.dataStartBytes + capacityChunks * this.chunkBytes);
        await pwriteAll(this.fd, encodeSuperblock(next), Number(next.sequence % 2n) * blockBytes);
        await fdatasync(this.fd);
      } catch (error) {
        throw toBlockError(error, `growing pool ${this.path}`);
      }
      this.superblock = next;
      this.chunks.grow(capacityChunks);
      return this.usage();
    };
    const result = this.superblockWrites.then(run);
    this.superblockWrites = result.then(() => undefined, () => undefined);
    return result;
  }

  async read(offsetBytes: number, target: Buffer): Promise<void> {
    this.checkOpen('read');
    const reads: Array<Promise<void>> = [];
    this.forEachRun(offsetBytes, target.length, (physical, runOffset, runBytes, targetAt) => {
      const slice = target.subarray(targetAt, targetAt + runBytes);
      if (physical < 0) {
        slice.fill(0);
        return;
      }
      reads.push(this.withPins(physical, runOffset, runBytes, async () => {
        const done = await preadAll(this.fd, slice, 0, this.physicalOffset(physical) + runOffset);
        if (done < slice.length) slice.fill(0, done);
      }, `read ${this.path} at ${offsetBytes}`));
    });
    await settleAll(reads);
  }

  async write(offsetBytes: number, data: Buffer, flags: WriteFlags): Promise<void> {
    this.checkWritable('write');
    await this.writeChunks(offsetBytes, data.length, (at, length) => data.subarray(at - offsetBytes, at - offsetBytes + length));
    if (flags.fua) await this.flush();
  }

  async flush(): Promise<void> {
    this.checkOpen('flush');
    if (this.options.readOnly) return;
    try {
      await this.commits.run();
    } catch (error) {
      if (error instanceof BlockError && error.code === 'ESHUTDOWN') throw error;
      // fsync failure: the kernel may have dropped the pages it could not
      // write, so a retry could succeed over lost data. Never retryable.
      throw new BlockError('EIO', `flush ${this.path}: ${(error as Error).message}`, { retryable: false, cause: error });
    }
  }

  async trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void> {
    this.checkWritable('trim');
    await this.discard(offsetBytes, lengthBytes, flags.fua);
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    this.checkWritable('write-zeroes');
    if (!flags.noHole) {
      await this.discard(offsetBytes, lengthBytes, flags.fua);
      return;
    }
    // NO_HOLE: the range must stay allocated, which takes pool space and real writes.
    if (flags.fast) throw new BlockError('ENOTSUP', 'write-zeroes with NO_HOLE on a thin pool allocates and writes: not fast');
    const zeroes = this.zeroes();
    await this.writeChunks(offsetBytes, lengthBytes, (_at, length) => zeroes.subarray(0, length));
    if (flags.fua) await this.flush();
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    this.checkOpen('block-status');
    const extents: Extent[] = [];
    for (let at = offsetBytes; at < offsetBytes + lengthBytes && extents.length < extentsPerCallMax;) {
      const chunk = Math.floor(at / this.chunkBytes);
      const end = Math.min((chunk + 1) * this.chunkBytes, offsetBytes + lengthBytes);
      const hole = this.chunkMap.physicalOf(chunk) < 0;
      const last = extents[extents.length - 1];
      if (last && last.hole === hole) last.lengthBytes += end - at;
      else extents.push({ offsetBytes: at, lengthBytes: end - at, hole, zero: hole });
      at = end;
    }
    return extents;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.superblockWrites;
    await closeFd(this.fd);
    this.lock?.release();
  }

  private physicalOffset(physical: number): number {
    return this.geometry.dataStartBytes + physical * this.chunkBytes;
  }

  /** Calls back per run of virtual chunks that are all unallocated (physical -1) or physically contiguous. */
  private forEachRun(offsetBytes: number, lengthBytes: number,
    visit: (physical: number, runOffset: number, runBytes: number, targetAt: number) => void): void {
    const end = offsetBytes + lengthBytes;
    let at = offsetBytes;
    while (at < end) {
      const chunk = Math.floor(at / this.chunkBytes);
      const within = at - chunk * this.chunkBytes;
      const physical = this.chunkMap.physicalOf(chunk);
      let runEnd = Math.min((chunk + 1) * this.chunkBytes, end);
      let next = chunk + 1;
      while (runEnd < end) {
        const following = this.chunkMap.physicalOf(next);
        if (physical < 0 ? following >= 0 : following !== physical + (next - chunk)) break;
        runEnd = Math.min((next + 1) * this.chunkBytes, end);
        next += 1;
      }
      visit(physical, within, runEnd - at, at - offsetBytes);
      at = runEnd;
    }
  }

  /** Writes a range chunk by chunk, all chunks at once; `bytesAt` gives the bytes for each piece. */
  private async writeChunks(offsetBytes: number, lengthBytes: number, bytesAt: (at: number, length: number) => Buffer): Promise<void> {
    const pieces: Array<Promise<void>> = [];
    for (let at = offsetBytes; at < offsetBytes + lengthBytes;) {
      const chunk = Math.floor(at / this.chunkBytes);
      const within = at - chunk * this.chunkBytes;
      const length = Math.min(this.chunkBytes - within, offsetBytes + lengthBytes - at);
      pieces.push(this.writePiece(chunk, within, bytesAt(at, length)));
      at += length;
    }
    await settleAll(pieces);
  }

  private async writePiece(chunk: number, within: number, piece: Buffer): Promise<void> {
    for (let pending = this.allocating.get(chunk); pending; pending = this.allocating.get(chunk)) {
      await pending.catch(() => undefined);
    }
    this.checkOpen('write');
    const mapped = this.chunkMap.physicalOf(chunk);
    if (mapped >= 0) {
      await this.withPins(mapped, within, piece.length,
        () => pwriteAll(this.fd, piece, this.physicalOffset(mapped) + within), `write ${this.path}`);
      return;
    }
    const physical = this.chunks.take();
    const allocation = (async () => {
      let whole = piece;
      if (within !== 0 || piece.length !== this.chunkBytes) {
        // A reused chunk still holds a freed chunk's bytes: the rest must read as zeroes.
        whole = Buffer.alloc(this.chunkBytes);
        piece.copy(whole, within);
      }
      try {
        await pwriteAll(this.fd, whole, this.physicalOffset(physical));
      } catch (error) {
        this.chunks.release(physical);
        throw toBlockError(error, `write ${this.path} (new chunk ${chunk})`);
      }
      // Mapped only now: a commit never publishes a mapping whose data write has not completed.
      this.chunkMap.map(chunk, physical);
    })();
    this.allocating.set(chunk, allocation);
    try {
      await allocation;
    } finally {
      this.allocating.delete(chunk);
    }
  }

  private async withPins(physical: number, runOffset: number, runBytes: number, io: () => Promise<void>, what: string): Promise<void> {
    const first = physical;
    const last = physical + Math.floor((runOffset + runBytes - 1) / this.chunkBytes);
    this.chunks.pin(first, last);
    try {
      await io();
    } catch (error) {
      throw toBlockError(error, what);
    } finally {
      const freedMeanwhile = this.chunks.unpin(first, last);
      if (freedMeanwhile.length > 0) void this.recycle(freedMeanwhile);
    }
  }

  /** Trim and write-zeroes: whole chunks return to the pool, partial ones are zeroed in place. */
  private async discard(offsetBytes: number, lengthBytes: number, fua: boolean): Promise<void> {
    if (lengthBytes === 0) return;
    const firstChunk = Math.floor(offsetBytes / this.chunkBytes);
    const lastChunk = Math.floor((offsetBytes + lengthBytes - 1) / this.chunkBytes);
    for (;;) {
      const pending = [...this.allocating.entries()].filter(([chunk]) => chunk >= firstChunk && chunk <= lastChunk);
      if (pending.length === 0) break;
      await Promise.allSettled(pending.map(([, promise]) => promise));
    }
    this.checkOpen('trim');
    let unmapped = 0;
    const partial: Array<Promise<void>> = [];
    for (let chunk = firstChunk; chunk <= lastChunk; chunk += 1) {
      const physical = this.chunkMap.physicalOf(chunk);
      if (physical < 0) continue;
      const start = Math.max(offsetBytes, chunk * this.chunkBytes);
      const end = Math.min(offsetBytes + lengthBytes, (chunk + 1) * this.chunkBytes, this.sizeBytes);
      const chunkEnd = Math.min((chunk + 1) * this.chunkBytes, this.sizeBytes);
      if (start === chunk * this.chunkBytes && end === chunkEnd) {
        this.chunkMap.unmap(chunk);
        unmapped += 1;
      } else {
        const within = start - chunk * this.chunkBytes;
        partial.push(this.withPins(physical, within, end - start,
          () => pwriteAll(this.fd, this.zeroes().subarray(0, end - start), this.physicalOffset(physical) + within),
          `zero ${this.path} at ${start}`));
      }
    }
    await settleAll(partial);
    // Commit now, so freed chunks can serve writes that are waiting for space.
    if (unmapped > 0 || fua) await this.flush();
  }

  private zeroes(): Buffer {
    this.zeroChunk ??= Buffer.alloc(this.chunkBytes);
    return this.zeroChunk;
  }

  /** One map commit (see ThinMap.commit); chunks it made durably free go back to the pool. */
  private async commitMap(): Promise<void> {
    this.checkOpen('flush');
    const freed = await this.chunkMap.commit(this.fd);
    if (freed.length > 0) await this.recycle(freed);
  }

  /** Returns durably unmapped chunks to the pool once no I/O holds them, releasing their disk space first. */
  private async recycle(chunks: number[]): Promise<void> {
    const ready = this.chunks.unpinnedOf(chunks);
    if (native !== undefined && !this.closed) {
      await Promise.all(ready.map((chunk) => new Promise<number>((resolve) =>
        native!.fallocateAsync(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, this.physicalOffset(chunk), this.chunkBytes, resolve))));
    }
    for (const chunk of ready) this.chunks.release(chunk);
  }

  private checkOpen(what: string): void {
    if (this.closed) throw new BlockError('ESHUTDOWN', `${what}: thin pool ${this.path} is closed`);
  }

  private checkWritable(what: string): void {
    this.checkOpen(what);
    if (this.options.readOnly) throw new BlockError('EPERM', `${what}: thin pool ${this.path} is open read-only`);
  }
}

/** Waits for every piece, then rejects with the first failure: no piece is left running behind our answer. */
async function settleAll(pieces: Array<Promise<void>>): Promise<void> {
  if (pieces.length === 1) return pieces[0];
  const results = await Promise.allSettled(pieces);
  for (const result of results) if (result.status === 'rejected') throw result.reason;
}
