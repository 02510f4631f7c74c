import assert from 'node:assert/strict';
import { BlockError } from '../blockdev/errors.js';

export interface LowWaterEvent {
  below: boolean;
  freeBytes: number;
  lowWaterBytes: number;
  path: string;
}

/**
 * A thin pool's physical chunks: which are in use, which are held by I/O in
 * flight (a freed chunk is reused only once nothing reads or writes it), and
 * the low-water warning. Next-fit from where the last allocation ended, as
 * dm-thin's allocator does, so a sequential writer gets contiguous chunks.
 */
export class ChunkAllocator {
  /** 1 for a physical chunk mapped, being allocated, or freed but not yet reusable. */
  private used: Uint8Array;
  private usedCount = 0;
  private scanFrom = 0;
  /** Physical chunks with I/O in flight: freeing them waits. */
  private readonly pins = new Map<number, number>();
  private readonly freeWhenUnpinned = new Set<number>();
  private belowLowWater = false;

  constructor(capacityChunks: number, mapped: Uint32Array, private readonly pool: { path: string; chunkBytes: number;
    lowWaterBytes: number; onLowWater?: (event: LowWaterEvent) => void }) {
    this.used = new Uint8Array(capacityChunks);
    for (const entry of mapped) {
      if (entry === 0) continue;
      if (this.used[entry - 1] !== 0) assert.fail(`physical chunk ${entry - 1} is mapped twice`);
      this.used[entry - 1] = 1;
      this.usedCount += 1;
    }
  }

  get capacityChunks(): number {
    return this.used.length;
  }

  get usedChunks(): number {
    return this.usedCount;
  }

  get isBelowLowWater(): boolean {
    return this.belowLowWater;
  }

  /** A free chunk, now in use; ENOSPC (retryable: grow the pool, or trim) when there is none. */
  take(): number {
    const capacity = this.used.length;
    if (this.usedCount >= capacity) {
      throw new BlockError('ENOSPC', `thin pool ${this.pool.path} is full: all ${capacity} chunks of ${this.pool.chunkBytes} bytes ` +
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
    throw new BlockError('EIO', `thin pool ${this.pool.path}: free count and chunk table disagree`);
  }

  /** Returns a chunk to the free pool (its unmapping is durable, or its first write failed). */
  release(physical: number): void {
    if (this.used[physical] === 0) return;
    this.used[physical] = 0;
    this.usedCount -= 1;
    assert(this.usedCount >= 0);
    this.checkLowWater();
  }

  /** The pool grew: the new chunks are free. Chunks in use keep their numbers (requests in flight hold them). */
  grow(capacityChunks: number): void {
    if (!(capacityChunks >= this.used.length)) assert.fail(`a pool never shrinks (${this.used.length} -> ${capacityChunks} chunks)`);
    const used = new Uint8Array(capacityChunks);
    used.set(this.used);
    this.used = used;
    this.checkLowWater();
  }

  pin(first: number, last: number): void {
    for (let chunk = first; chunk <= last; chunk += 1) this.pins.set(chunk, (this.pins.get(chunk) ?? 0) + 1);
  }

  /** Lets go of chunks; returns those freed meanwhile, which may now be recycled. */
  unpin(first: number, last: number): number[] {
    const ready: number[] = [];
    for (let chunk = first; chunk <= last; chunk += 1) {
      const count = (this.pins.get(chunk) ?? 1) - 1;
      if (count > 0) {
        this.pins.set(chunk, count);
        continue;
      }
      this.pins.delete(chunk);
      if (this.freeWhenUnpinned.delete(chunk)) ready.push(chunk);
    }
    return ready;
  }

  /** Of chunks whose unmapping is durable, those no I/O holds; the others are recycled when unpinned. */
  unpinnedOf(chunks: number[]): number[] {
    return chunks.filter((chunk) => {
      if (!this.pins.has(chunk)) return true;
      this.freeWhenUnpinned.add(chunk);
      return false;
    });
  }

  private checkLowWater(): void {
    const { lowWaterBytes } = this.pool;
    if (lowWaterBytes <= 0) return;
    const freeBytes = (this.used.length - this.usedCount) * this.pool.chunkBytes;
    const below = freeBytes < lowWaterBytes;
    if (below === this.belowLowWater) return;
    this.belowLowWater = below;
    this.pool.onLowWater?.({ below, freeBytes, lowWaterBytes, path: this.pool.path });
  }
}
