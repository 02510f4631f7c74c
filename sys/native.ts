import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

/** System calls Node lacks, from our small addon (native/nbd_native.c). */
export interface NativeCalls {
  /** 0 or -errno. */
  fallocate(fd: number, mode: number, offsetBytes: number, lengthBytes: number): number;
  /** Same, on the thread pool; the callback gets 0 or -errno. */
  fallocateAsync(fd: number, mode: number, offsetBytes: number, lengthBytes: number,
    callback: (result: number) => void): void;
  /** New offset or -errno. */
  seek(fd: number, offsetBytes: number, whence: number): number;
  /** Bytes transferred or -errno; -EAGAIN when the call would block. */
  preadNoWait(fd: number, target: Buffer, positionBytes: number): number;
  /** pwrite(2): bytes written or -errno. Optional: an addon built from older sources lacks it. */
  pwriteSync?(fd: number, data: Buffer, positionBytes: number): number;
  /** A new descriptor for the same open file, or -errno. */
  dup?(fd: number): number;
  /** shutdown(SHUT_RDWR): 0 or -errno. */
  shutdownSocket?(fd: number): number;
  /**
   * On the thread pool: sends `header`, then `lengthBytes` of `fileFd` from
   * `positionBytes` by sendfile (zeroes past the file's end). The callback
   * gets 0 or -errno (-EAGAIN: the socket stayed full for `stallMs`), and
   * the bytes of header and data sent.
   * Optional: an addon built from older sources lacks these three.
   */
  sendFileAsync?(socketFd: number, header: Buffer, fileFd: number, positionBytes: number, lengthBytes: number,
    stallMs: number, callback: (result: number, sentBytes: number) => void): void;
  /**
   * Whole-file OFD lock (F_OFD_SETLK), shared or exclusive: 0, or -errno
   * (-EAGAIN when another open file holds a conflicting lock). Optional: an
   * addon built from older sources lacks it and lockHolder.
   */
  lockFile?(fd: number, exclusive: boolean): number;
  /** 0 when no other open file locks it, 1 when one holds it shared, 2 exclusive; or -errno. */
  lockHolder?(fd: number): number;
}

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;
export const SEEK_END = 2;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
export const ENXIO = 6;
export const EAGAIN = 11;
export const EOPNOTSUPP = 95;

function load(): NativeCalls | undefined {
  if (process.env.NBD_MIRROR_NO_NATIVE === '1') return undefined;
  const here = path.dirname(fileURLToPath(import.meta.url));
  const require = createRequire(import.meta.url);
  for (const candidate of ['../../native/build/Release/nbd_native.node', '../native/build/Release/nbd_native.node']) {
    try {
      return require(path.join(here, candidate)) as NativeCalls;
    } catch {
      // Try the next layout (running from dist/ or from the source tree).
    }
  }
  return undefined;
}

/**
 * undefined when the addon was not built or NBD_MIRROR_NO_NATIVE=1; callers
 * then use portable fallbacks (zero writes instead of hole punching, "all
 * data" block status, thread-pool reads).
 */
export const native: NativeCalls | undefined = load();
