import assert from 'node:assert/strict';

/**
 * Bytes received but not yet parsed. Chunks are never written again once
 * pushed (Node's fresh buffers, or the socket reader's slab views, which it
 * only ever advances past), so a run that lies inside one chunk is returned
 * as a zero-copy view; only runs that span chunks are copied.
 */
export class InputQueue {
  private chunks: Buffer[] = [];
  private headOffset = 0;
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** Removes and returns the next `count` bytes; the caller checked `length`. */
  take(count: number): Buffer {
    assert(count <= this.total, 'take past the end of the input');
    if (count === 0) return Buffer.alloc(0);
    const head = this.chunks[0];
    if (head.length - this.headOffset >= count) {
      const view = head.subarray(this.headOffset, this.headOffset + count);
      this.consume(count);
      return view;
    }
    const copy = Buffer.allocUnsafe(count);
    this.copyInto(copy, 0, count);
    return copy;
  }

  /** A zero-copy view of the next `count` bytes when they lie in one chunk, else undefined. */
  takeIfContiguous(count: number): Buffer | undefined {
    assert(count <= this.total, 'take past the end of the input');
    const head = this.chunks[0];
    if (count === 0 || head.length - this.headOffset < count) return undefined;
    const view = head.subarray(this.headOffset, this.headOffset + count);
    this.consume(count);
    return view;
  }

  /** Copies up to `count` bytes into `target` at `targetOffset`; returns how many. */
  copyInto(target: Buffer, targetOffset: number, count: number): number {
    let copied = 0;
    while (copied < count && this.total > 0) {
      const head = this.chunks[0];
      const available = Math.min(head.length - this.headOffset, count - copied);
      head.copy(target, targetOffset + copied, this.headOffset, this.headOffset + available);
      copied += available;
      this.consume(available);
    }
    return copied;
  }

  /** Discards up to `count` bytes; returns how many were discarded. */
  skip(count: number): number {
    const skipped = Math.min(count, this.total);
    this.consume(skipped);
    return skipped;
  }

  clear(): void {
    this.chunks = [];
    this.headOffset = 0;
    this.total = 0;
  }

  private consume(count: number): void {
    this.total -= count;
    while (count > 0) {
      const head = this.chunks[0];
      const available = head.length - this.headOffset;
      if (count < available) {
        this.headOffset += count;
        return;
      }
      count -= available;
      this.chunks.shift();
      this.headOffset = 0;
    }
    if (this.total === 0) assert(this.chunks.length === 0);
  }
}
