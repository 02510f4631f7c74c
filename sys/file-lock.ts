import fs from 'node:fs';
import { BlockError, toBlockError } from '../blockdev/errors.js';
import { EAGAIN, native } from './native.js';

/** Exclusive: this process writes the file. Shared: it only reads it, and nobody may write meanwhile. */
export type LockMode = 'exclusive' | 'shared';

interface HeldLock {
  key: string;
  fd: number;
  mode: LockMode;
  holders: number;
}

/**
 * Locks this process holds, by device and inode. Holders in one process
 * share one lock: a mirror opens its log twice (the region log and the crash
 * toolkit's device over it), and a re-added leg is opened again while its
 * earlier device may not have closed yet. Keeping two legs of one mirror
 * apart is the controller's job, not the lock's.
 */
const held = new Map<string, HeldLock>();

/** Files opened without a lock, and why: the addon is missing, or the filesystem has no OFD locks. */
export const filesLeftUnlocked = new Map<string, string>();

/**
 * A whole-file lock on storage: a leg, a thin pool, or a region log.
 *
 * Two processes writing one mirror's files make the legs diverge without a
 * trace (each has its own dirty bits, cache and ordering), and the second
 * server's clean shutdown would mark the log clean under the first one's
 * dirty regions. So a server locks every file it serves exclusively, the
 * offline tools lock what they read shared and what they write exclusively,
 * and a conflict is refused before anything is read or written.
 *
 * The lock is an OFD lock on a descriptor of its own (QEMU's image locking
 * works the same way): the kernel drops it when the process dies, so a
 * server killed with -9 leaves nothing stale behind.
 */
export class FileLock {
  private released = false;

  private constructor(private readonly entry: HeldLock | undefined) {}

  /** Locks `path`, or throws EBUSY naming who holds it; `what` names the file in messages ("leg", "region log"). */
  static acquire(path: string, mode: LockMode, what: string): FileLock {
    const lockFile = native?.lockFile;
    if (lockFile === undefined) {
      filesLeftUnlocked.set(path, 'the native addon is not built, so files cannot be locked');
      return new FileLock(undefined);
    }
    let fd: number;
    try {
      fd = fs.openSync(path, mode === 'exclusive' ? fs.constants.O_RDWR : fs.constants.O_RDONLY);
    } catch (error) {
      throw toBlockError(error, `cannot open ${what} ${path} to lock it`);
    }
    const key = identityOf(fs.fstatSync(fd, { bigint: true }));
    const existing = held.get(key);
    if (existing) {
      fs.closeSync(fd);
      if (existing.mode === 'shared' && mode === 'exclusive') {
        throw new BlockError('EBUSY', `${what} ${path} is open read-only in this process; it cannot be written until that ends`);
      }
      existing.holders += 1;
      return new FileLock(existing);
    }
    const result = lockFile(fd, mode === 'exclusive');
    if (result === 0) {
      const entry = { key, fd, mode, holders: 1 };
      held.set(key, entry);
      return new FileLock(entry);
    }
    const holder = result === -EAGAIN ? native?.lockHolder?.(fd) : undefined;
    fs.closeSync(fd);
    if (result === -EAGAIN) throw new BlockError('EBUSY', inUseMessage(path, what, holder));
    // ENOLCK, EINVAL: a filesystem without OFD locks. Serving it unlocked is what every release before this did.
    filesLeftUnlocked.set(path, `the filesystem refused a lock (errno ${-result})`);
    return new FileLock(undefined);
  }

  /** Who else holds a lock on `path`: for offline status, which reads without locking. */
  static holder(path: string): 'none' | 'shared' | 'exclusive' | 'unknown' {
    if (native?.lockHolder === undefined) return 'unknown';
    let fd: number;
    try {
      fd = fs.openSync(path, fs.constants.O_RDONLY);
    } catch {
      return 'unknown';
    }
    try {
      const result = native.lockHolder(fd);
      return result === 0 ? 'none' : result === 1 ? 'shared' : result === 2 ? 'exclusive' : 'unknown';
    } finally {
      fs.closeSync(fd);
    }
  }

  get locked(): boolean {
    return this.entry !== undefined;
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    const { entry } = this;
    if (entry === undefined) return;
    entry.holders -= 1;
    if (entry.holders > 0) return;
    held.delete(entry.key);
    fs.closeSync(entry.fd);
  }
}

function inUseMessage(path: string, what: string, holder: number | undefined): string {
  const who = holder === 1
    ? 'another process is reading it (an offline nbd-mirror check, or another tool)'
    : 'another process holds it for writing (a running nbd-mirror server, or a tool working on it)';
  return `${what} ${path} is in use: ${who}. Stop that process first, or act through the running server's admin socket`;
}

/** An exclusive lock on `path` if it exists; a file about to be created has no other user yet. */
export function lockIfExists(path: string, what: string): FileLock | undefined {
  return fs.existsSync(path) ? FileLock.acquire(path, 'exclusive', what) : undefined;
}

/**
 * Device and inode: what makes two paths (a hard link, a symlink, a second
 * name of a device node) the same file. undefined when `path` does not exist.
 */
export function fileIdentity(path: string): string | undefined {
  const stat = fs.statSync(path, { bigint: true, throwIfNoEntry: false });
  return stat && identityOf(stat);
}

function identityOf(stat: fs.BigIntStats): string {
  return `${stat.dev}:${stat.ino}`;
}
