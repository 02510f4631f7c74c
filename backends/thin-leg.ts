import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { BlockError, toBlockError } from '../blockdev/errors.js';
import { GroupCommit } from '../blockdev/group-commit.js';
import type { BlockDevice, DeviceCapabilities, Extent, WriteFlags, ZeroFlags } from '../blockdev/types.js';
import { FileLock } from '../sys/file-lock.js';
import { closeFd, fdatasync, preadAll, pwriteAll, pwriteAllSync } from '../sys/fs-io.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, native } from '../sys/native.js';
import {
  blockBytes, decodeMapPage, encodeMapPage, encodeSuperblock, entriesPerMapPage, geometryOf, mapAreaOffset,
  mapPageOffset, readSuperblock, type ThinGeometry, type ThinSuperblock,
} from './thin-format.js';

export interface ThinCreateOptions {
  virtualSizeBytes: number;
  poolBytes: number;
  chunkSizeBytes?: number;
  overwrite?: boolean;
}

export interface ThinOpenOptions {
  path: string;
  /** For offline tools: the file is opened read-only and every change is refused. */
  readOnly?: boolean;
  /** Below this much free space a warning is logged (once per crossing) and status shows it. */
  lowWaterBytes?: number;
  onLowWater?: (event: { below: boolean; freeBytes: number; lowWaterBytes: number; path: string }) => void;
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

export const defaultChunkBytes = 64 * 1024;
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
  /** Virtual chunk → physical chunk + 1, 0 when unallocated. */
  private readonly map: Uint32Array;
  private readonly pageSequence: number[];
  private readonly dirtyPages = new Set<number>();
  /** 1 for a physical chunk mapped, being allocated, or freed but not yet reusable. */
  private used: Uint8Array;
  private usedCount = 0;
  private scanFrom = 0;
  private readonly allocating = new Map<number, Promise<void>>();
  /** Unmapped in memory; reusable once a commit has made the unmapping durable. */
  private pendingFree: number[] = [];
  /** Physical chunks with I/O in flight: freeing them waits. */
  private readonly pins = new Map<number, number>();
  private readonly freeWhenUnpinned = new Set<number>();
  private readonly commits: GroupCommit;
  private superblockWrites: Promise<void> = Promise.resolve();
  private belowLowWater = false;
  private closed = false;
  /** Keeps other processes off the pool file while it is open (see FileLock). */
  private lock: FileLock | undefined;
  private zeroChunk: Buffer | undefined;

  private constructor(readonly path: string, private readonly fd: number, superblock: ThinSuperblock,
    map: Uint32Array, pageSequence: number[], private readonly options: ThinOpenOptions) {
    this.superblock = superblock;
    this.chunkBytes = superblock.chunkSizeBytes;
    this.sizeBytes = superblock.virtualSizeBytes;
    this.geometry = geometryOf(superblock.virtualSizeBytes, superblock.chunkSizeBytes);
    this.map = map;
    this.pageSequence = pageSequence;
    this.used = new Uint8Array(superblock.capacityChunks);
    for (const entry of map) {
      if (entry === 0) continue;
      this.used[entry - 1] = 1;
      this.usedCount += 1;
    }
    this.capabilities = ThinLeg.writableCapabilities;
    this.commits = new GroupCommit(() => this.commitMap());
    if (options.readOnly) this.capabilities = { ...this.capabilities, readOnly: true };
  }

  /** Refused before the first write: a device cannot be sized as the pool's file is, by truncation. */
  static refuseBlockDevice(path: string): void {
    if (fs.statSync(path, { throwIfNoEntry: false })?.isBlockDevice()) {
      throw new BlockError('EINVAL', `thin pool ${path} is a block device; a thin pool is a regular file whose size ` +
        'follows its capacity (pool grow). Use the device as a plain leg instead');
    }
  }

  /** Creates an empty pool file: superblock, one valid copy of every map page, sparse data area. */
  static create(path: string, options: ThinCreateOptions): ThinSuperblock {
    const chunkSizeBytes = options.chunkSizeBytes ?? defaultChunkBytes;
    if (chunkSizeBytes < blockBytes || (chunkSizeBytes & (chunkSizeBytes - 1)) !== 0) {
      throw new BlockError('EINVAL', `thin chunk size ${chunkSizeBytes} must be a power of two of at least 4096`);
    }
    if (options.virtualSizeBytes <= 0 || options.virtualSizeBytes % blockBytes !== 0) {
      throw new BlockError('EINVAL', `thin virtual size ${options.virtualSizeBytes} must be a positive multiple of 4096`);
    }
    const geometry = geometryOf(options.virtualSizeBytes, chunkSizeBytes);
    const capacityChunks = Math.min(geometry.chunkCount, Math.floor(options.poolBytes / chunkSizeBytes));
    if (capacityChunks < 1) throw new BlockError('EINVAL', `thin pool size ${options.poolBytes} is smaller than one ${chunkSizeBytes}-byte chunk`);
    const superblock: ThinSuperblock = {
      sequence: 1n, poolUuid: randomBytes(16), virtualSizeBytes: options.virtualSizeBytes, chunkSizeBytes, capacityChunks,
    };
    ThinLeg.refuseBlockDevice(path);
    const fd = fs.openSync(path, options.overwrite ? 'w' : 'wx');
    try {
      pwriteAllSync(fd, encodeSuperblock(superblock), blockBytes);
      for (let page = 0; page < geometry.mapPageCount; page += 1) {
        pwriteAllSync(fd, encodeMapPage(superblock.poolUuid, page, 1n, new Uint32Array(entriesInPage(geometry, page))),
          mapPageOffset(page, 1));
      }
      fs.ftruncateSync(fd, geometry.dataStartBytes + capacityChunks * chunkSizeBytes);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    return superblock;
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
      const { superblock, map, pageSequence } = readPool(fd, options.path);
      const pool = new ThinLeg(options.path, fd, superblock, map, pageSequence, options);
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
    const usedBytes = this.usedCount * this.chunkBytes;
    return {
      path: this.path,
      chunkSizeBytes: this.chunkBytes,
      capacityBytes,
      usedBytes,
      freeBytes: capacityBytes - usedBytes,
      virtualSizeBytes: this.sizeBytes,
      lowWaterBytes: this.options.lowWaterBytes ?? 0,
      belowLowWater: this.belowLowWater,
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
      const used = new Uint8Array(capacityChunks);
      used.set(this.used);
      this.used = used;
      this.superblock = next;
      this.checkLowWater();
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
      const hole = this.map[chunk] === 0;
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
      const physical = this.map[chunk] - 1;
      let runEnd = Math.min((chunk + 1) * this.chunkBytes, end);
      let next = chunk + 1;
      while (runEnd < end) {
        const following = this.map[next] - 1;
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
    const mapped = this.map[chunk] - 1;
    if (mapped >= 0) {
      await this.withPins(mapped, within, piece.length,
        () => pwriteAll(this.fd, piece, this.physicalOffset(mapped) + within), `write ${this.path}`);
      return;
    }
    const physical = this.takeFreeChunk();
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
        this.releaseChunk(physical);
        throw toBlockError(error, `write ${this.path} (new chunk ${chunk})`);
      }
      // Mapped only now: a commit never publishes a mapping whose data write has not completed.
      this.map[chunk] = physical + 1;
      this.dirtyPages.add(Math.floor(chunk / entriesPerMapPage));
    })();
    this.allocating.set(chunk, allocation);
    try {
      await allocation;
    } finally {
      this.allocating.delete(chunk);
    }
  }

  private takeFreeChunk(): number {
    const capacity = this.superblock.capacityChunks;
    if (this.usedCount >= capacity) {
      throw new BlockError('ENOSPC', `thin pool ${this.path} is full: all ${capacity} chunks of ${this.chunkBytes} bytes ` +
        'are in use; grow it (nbd-mirror pool grow) or trim unused data', { retryable: true });
    }
    for (let scanned = 0; scanned < capacity; scanned += 1) {
      const candidate = (this.scanFrom + scanned) % capacity;
      if (this.used[candidate] === 0) {
        this.used[candidate] = 1;
        this.usedCount += 1;
        this.scanFrom = (candidate + 1) % capacity;
        this.checkLowWater();
        return candidate;
      }
    }
    throw new BlockError('EIO', `thin pool ${this.path}: free count and chunk table disagree`);
  }

  private releaseChunk(physical: number): void {
    if (this.used[physical] === 0) return;
    this.used[physical] = 0;
    this.usedCount -= 1;
    this.checkLowWater();
  }

  private checkLowWater(): void {
    const lowWaterBytes = this.options.lowWaterBytes ?? 0;
    if (lowWaterBytes <= 0) return;
    const freeBytes = (this.superblock.capacityChunks - this.usedCount) * this.chunkBytes;
    const below = freeBytes < lowWaterBytes;
    if (below === this.belowLowWater) return;
    this.belowLowWater = below;
    this.options.onLowWater?.({ below, freeBytes, lowWaterBytes, path: this.path });
  }

  private async withPins(physical: number, runOffset: number, runBytes: number, io: () => Promise<void>, what: string): Promise<void> {
    const first = physical;
    const last = physical + Math.floor((runOffset + runBytes - 1) / this.chunkBytes);
    for (let chunk = first; chunk <= last; chunk += 1) this.pins.set(chunk, (this.pins.get(chunk) ?? 0) + 1);
    try {
      await io();
    } catch (error) {
      throw toBlockError(error, what);
    } finally {
      for (let chunk = first; chunk <= last; chunk += 1) {
        const count = (this.pins.get(chunk) ?? 1) - 1;
        if (count > 0) {
          this.pins.set(chunk, count);
          continue;
        }
        this.pins.delete(chunk);
        if (this.freeWhenUnpinned.delete(chunk)) void this.recycle([chunk]);
      }
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
      const physical = this.map[chunk] - 1;
      if (physical < 0) continue;
      const start = Math.max(offsetBytes, chunk * this.chunkBytes);
      const end = Math.min(offsetBytes + lengthBytes, (chunk + 1) * this.chunkBytes, this.sizeBytes);
      const chunkEnd = Math.min((chunk + 1) * this.chunkBytes, this.sizeBytes);
      if (start === chunk * this.chunkBytes && end === chunkEnd) {
        this.map[chunk] = 0;
        this.dirtyPages.add(Math.floor(chunk / entriesPerMapPage));
        this.pendingFree.push(physical);
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

  /**
   * One map commit: data first (fdatasync), then the changed map pages, each
   * into its older copy, then fdatasync. Only mappings whose data write had
   * completed are in memory, so the snapshot taken here never points at
   * unwritten chunks.
   */
  private async commitMap(): Promise<void> {
    this.checkOpen('flush');
    const pages = [...this.dirtyPages].sort((a, b) => a - b);
    this.dirtyPages.clear();
    const freed = this.pendingFree;
    this.pendingFree = [];
    const writes = pages.map((page) => {
      const sequence = this.pageSequence[page] + 1;
      const start = page * entriesPerMapPage;
      const entries = this.map.slice(start, start + entriesInPage(this.geometry, page));
      return { page, sequence, buffer: encodeMapPage(this.superblock.poolUuid, page, BigInt(sequence), entries) };
    });
    try {
      await fdatasync(this.fd);
      if (writes.length > 0) {
        await Promise.all(writes.map((write) => pwriteAll(this.fd, write.buffer, mapPageOffset(write.page, write.sequence % 2))));
        await fdatasync(this.fd);
      }
    } catch (error) {
      for (const page of pages) this.dirtyPages.add(page);
      this.pendingFree = freed.concat(this.pendingFree);
      throw error;
    }
    for (const write of writes) this.pageSequence[write.page] = write.sequence;
    if (freed.length > 0) await this.recycle(freed);
  }

  /** Returns durably unmapped chunks to the pool once no I/O holds them, releasing their disk space first. */
  private async recycle(chunks: number[]): Promise<void> {
    const ready = chunks.filter((chunk) => {
      if (!this.pins.has(chunk)) return true;
      this.freeWhenUnpinned.add(chunk);
      return false;
    });
    if (native !== undefined && !this.closed) {
      await Promise.all(ready.map((chunk) => new Promise<number>((resolve) =>
        native!.fallocateAsync(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, this.physicalOffset(chunk), this.chunkBytes, resolve))));
    }
    for (const chunk of ready) this.releaseChunk(chunk);
  }

  private checkOpen(what: string): void {
    if (this.closed) throw new BlockError('ESHUTDOWN', `${what}: thin pool ${this.path} is closed`);
  }

  private checkWritable(what: string): void {
    this.checkOpen(what);
    if (this.options.readOnly) throw new BlockError('EPERM', `${what}: thin pool ${this.path} is open read-only`);
  }
}

function entriesInPage(geometry: ThinGeometry, page: number): number {
  return Math.min(entriesPerMapPage, geometry.chunkCount - page * entriesPerMapPage);
}

/** Waits for every piece, then rejects with the first failure: no piece is left running behind our answer. */
async function settleAll(pieces: Array<Promise<void>>): Promise<void> {
  if (pieces.length === 1) return pieces[0];
  const results = await Promise.allSettled(pieces);
  for (const result of results) if (result.status === 'rejected') throw result.reason;
}

function readPool(fd: number, path: string): { superblock: ThinSuperblock; map: Uint32Array; pageSequence: number[] } {
  const superblock = readSuperblock(fd);
  if (typeof superblock === 'string') {
    throw new BlockError('EINVAL', `${path} is not a usable thin pool (${superblock}); it was not created as one, or both superblock copies are damaged`);
  }
  const geometry = geometryOf(superblock.virtualSizeBytes, superblock.chunkSizeBytes);
  const area = Buffer.alloc(geometry.mapPageCount * 2 * blockBytes);
  const read = fs.readSync(fd, area, 0, area.length, mapAreaOffset);
  if (read < area.length) throw new BlockError('EINVAL', `${path}: the allocation map is truncated (${read} of ${area.length} bytes)`);
  const map = new Uint32Array(geometry.chunkCount);
  const pageSequence: number[] = [];
  for (let page = 0; page < geometry.mapPageCount; page += 1) {
    const decoded = [0, 1].map((copy) => decodeMapPage(
      area.subarray((page * 2 + copy) * blockBytes, (page * 2 + copy + 1) * blockBytes), superblock.poolUuid, page));
    const valid = decoded.filter((entry): entry is Exclude<typeof entry, string> => typeof entry !== 'string');
    if (valid.length === 0) {
      throw new BlockError('EIO', `${path}: allocation map page ${page} is damaged in both copies (${decoded.join('; ')}); ` +
        'the pool cannot be trusted and is refused');
    }
    const newest = valid.reduce((best, entry) => (entry.sequence > best.sequence ? entry : best));
    if (newest.entries.length !== entriesInPage(geometry, page)) {
      throw new BlockError('EIO', `${path}: allocation map page ${page} holds ${newest.entries.length} entries, expected ${entriesInPage(geometry, page)}`);
    }
    map.set(newest.entries, page * entriesPerMapPage);
    pageSequence.push(Number(newest.sequence));
  }
  const owner = new Map<number, number>();
  for (let chunk = 0; chunk < map.length; chunk += 1) {
    const physical = map[chunk] - 1;
    if (physical < 0) continue;
    if (physical >= superblock.capacityChunks) {
      throw new BlockError('EIO', `${path}: virtual chunk ${chunk} maps to physical chunk ${physical}, beyond the pool's ${superblock.capacityChunks}`);
    }
    const other = owner.get(physical);
    if (other !== undefined) {
      throw new BlockError('EIO', `${path}: physical chunk ${physical} is mapped by virtual chunks ${other} and ${chunk}; the map is corrupted`);
    }
    owner.set(physical, chunk);
  }
  return { superblock, map, pageSequence };
}
