import assert from 'node:assert/strict';

export interface PooledBuffer {
  /** Exactly the requested length. */
  buffer: Buffer;
  release(): void;
}

/**
 * Reuses large buffers (replies, write payloads). A fresh multi-megabyte
 * buffer costs page faults on first touch and GC work later; reusing one
 * costs nothing. Size classes are powers of two; idle memory is bounded.
 */
export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private idleBytes = 0;

  constructor(private readonly idleBytesMax: number, private readonly pooledBytesMin = 65536) {
    assert(idleBytesMax >= 0);
  }

  acquire(lengthBytes: number): PooledBuffer {
    if (lengthBytes < this.pooledBytesMin) return { buffer: Buffer.allocUnsafe(lengthBytes), release: noop };
    const classBytes = 2 ** Math.ceil(Math.log2(lengthBytes));
    const reused = this.free.get(classBytes)?.pop();
    if (reused !== undefined) this.idleBytes -= classBytes;
    const whole = reused ?? Buffer.allocUnsafeSlow(classBytes);
    let released = false;
    return {
      buffer: whole.subarray(0, lengthBytes),
      release: () => {
        assert(!released, 'pooled buffer released twice');
        released = true;
        this.put(classBytes, whole);
      },
    };
  }

  get idleBytesNow(): number {
    return this.idleBytes;
  }

  private put(classBytes: number, whole: Buffer): void {
    if (this.idleBytes + classBytes > this.idleBytesMax) return;
    let stack = this.free.get(classBytes);
    if (stack === undefined) this.free.set(classBytes, (stack = []));
    stack.push(whole);
    this.idleBytes += classBytes;
  }
}

function noop(): void {}
