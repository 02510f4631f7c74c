import assert from 'node:assert/strict';
import fs from 'node:fs';
import { BlockError } from '../blockdev/errors.js';
import { fdatasync, pwriteAll } from '../sys/fs-io.js';
import {
  blockBytes, decodeMapPage, encodeMapPage, entriesPerMapPage, geometryOf, mapAreaOffset, mapPageOffset, readSuperblock,
  type ThinGeometry, type ThinSuperblock,
} from './thin-format.js';

/**
 * A thin pool's allocation map: virtual chunk -> physical chunk, in memory,
 * and its commit to the pool file (docs/thin-pool.md). Each map page has two
 * copies; a commit writes the changed pages into their older copies after
 * the data they point at is durable, so a crash leaves either the old or the
 * new page, each valid on its own.
 */
export class ThinMap {
  /** Map pages changed since the last commit. */
  private readonly dirtyPages = new Set<number>();
  /** Unmapped in memory; reusable once a commit has made the unmapping durable. */
  private pendingFree: number[] = [];

  private constructor(private readonly poolUuid: Buffer, private readonly geometry: ThinGeometry,
    /** Virtual chunk -> physical chunk + 1, 0 when unallocated. */
    readonly entries: Uint32Array, private readonly pageSequence: number[]) {}

  /** Reads the newest valid copy of every map page and refuses a map that cannot be trusted. */
  static read(fd: number, path: string): { superblock: ThinSuperblock; map: ThinMap } {
    const superblock = readSuperblock(fd);
    if (typeof superblock === 'string') {
      throw new BlockError('EINVAL', `${path} is not a usable thin pool (${superblock}); it was not created as one, or both superblock copies are damaged`);
    }
    const geometry = geometryOf(superblock.virtualSizeBytes, superblock.chunkSizeBytes);
    const area = Buffer.alloc(geometry.mapPageCount * 2 * blockBytes);
    const read = fs.readSync(fd, area, 0, area.length, mapAreaOffset);
    if (read < area.length) throw new BlockError('EINVAL', `${path}: the allocation map is truncated (${read} of ${area.length} bytes)`);
    const entries = new Uint32Array(geometry.chunkCount);
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
      entries.set(newest.entries, page * entriesPerMapPage);
      pageSequence.push(Number(newest.sequence));
    }
    const owner = new Map<number, number>();
    for (let chunk = 0; chunk < entries.length; chunk += 1) {
      const physical = entries[chunk] - 1;
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
    return { superblock, map: new ThinMap(superblock.poolUuid, geometry, entries, pageSequence) };
  }

  /** The physical chunk holding virtual chunk `chunk`, or -1 when it has none. */
  physicalOf(chunk: number): number {
    return this.entries[chunk] - 1;
  }

  /** Maps a virtual chunk whose data write has completed (never before: a commit must not publish unwritten data). */
  map(chunk: number, physical: number): void {
    if (this.entries[chunk] !== 0) assert.fail(`virtual chunk ${chunk} is already mapped`);
    this.entries[chunk] = physical + 1;
    this.dirtyPages.add(Math.floor(chunk / entriesPerMapPage));
  }

  /** Unmaps a virtual chunk; its physical chunk is handed back by the commit that makes this durable. */
  unmap(chunk: number): void {
    const physical = this.physicalOf(chunk);
    if (physical < 0) assert.fail(`virtual chunk ${chunk} is not mapped`);
    this.entries[chunk] = 0;
    this.dirtyPages.add(Math.floor(chunk / entriesPerMapPage));
    this.pendingFree.push(physical);
  }

  /**
   * One commit: data first (fdatasync), then the changed map pages, each
   * into its older copy, then fdatasync. Returns the physical chunks whose
   * unmapping is now durable. On failure every change stays pending.
   */
  async commit(fd: number): Promise<number[]> {
    const pages = [...this.dirtyPages].sort((a, b) => a - b);
    this.dirtyPages.clear();
    const freed = this.pendingFree;
    this.pendingFree = [];
    const writes = pages.map((page) => {
      const sequence = this.pageSequence[page] + 1;
      const start = page * entriesPerMapPage;
      const entries = this.entries.slice(start, start + entriesInPage(this.geometry, page));
      const buffer = encodeMapPage(this.poolUuid, page, BigInt(sequence), entries);
      // Every encoded page decodes back to what was meant, before it can reach the disk.
      const decoded = decodeMapPage(buffer, this.poolUuid, page);
      assert(typeof decoded !== 'string' && decoded.sequence === BigInt(sequence) && Buffer.from(decoded.entries.buffer,
        decoded.entries.byteOffset, decoded.entries.byteLength).equals(Buffer.from(entries.buffer, entries.byteOffset, entries.byteLength)),
      `map page ${page} does not decode to what was encoded`);
      return { page, sequence, buffer };
    });
    try {
      await fdatasync(fd);
      if (writes.length > 0) {
        await Promise.all(writes.map((write) => pwriteAll(fd, write.buffer, mapPageOffset(write.page, write.sequence % 2))));
        await fdatasync(fd);
      }
    } catch (error) {
      for (const page of pages) this.dirtyPages.add(page);
      this.pendingFree = freed.concat(this.pendingFree);
      throw error;
    }
    for (const write of writes) this.pageSequence[write.page] = write.sequence;
    return freed;
  }
}

export function entriesInPage(geometry: ThinGeometry, page: number): number {
  return Math.min(entriesPerMapPage, geometry.chunkCount - page * entriesPerMapPage);
}
