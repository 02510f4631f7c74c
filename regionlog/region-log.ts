import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { BlockError, toBlockError } from '../blockdev/errors.js';
import { GroupCommit } from '../blockdev/group-commit.js';
import { FileLock } from '../sys/file-lock.js';
import { fileOrDeviceSize } from '../sys/device-size.js';
import { closeFd, fdatasync, pwriteAll } from '../sys/fs-io.js';
import { type BlockDevice, noFlags } from '../blockdev/types.js';
import { CrashPoints } from '../faults/crash-points.js';
import {
  bitmapBytesFor, copyBytesFor, copyBytesOfHeader, decodeCopy, encodeCopy, headerBytes, type LegRecord, legSlotsMax, LogFormatError,
  type LogState, regionsSet,
} from './format.js';

export interface CreateLogParams {
  deviceSizeBytes: number;
  regionSizeBytes: number;
  legUuids: Buffer[];
  mirrorUuid?: Buffer;
  /** The legs may differ from the start (block devices with old contents): every bit set, as after a crash. */
  legsMayDiffer?: boolean;
}

/** Logs larger than this are not region logs we wrote (1 PiB at 1 MiB regions is 256 MiB). */
const logBytesMax = 512 * 1024 * 1024;

export class RegionLogError extends Error {
  constructor(readonly path: string, message: string) {
    super(`region log ${path}: ${message}`);
    this.name = 'RegionLogError';
  }
}

/**
 * The persistent dirty-region log. `state` is the authoritative in-memory
 * copy; callers change it and call `commit()`, which writes the whole state to
 * the older of the two on-disk copies and fdatasyncs. Concurrent commits share
 * one write (group commit), so many writers dirtying regions at once cost one
 * log update.
 *
 * `isDurablyDirty` is what the write path asks: a region's bit may be relied
 * on only if a completed commit wrote it and nobody has cleared it since, so
 * clearing a bit in memory withdraws that promise at once.
 */
export class RegionLog {
  private readonly commits: GroupCommit;
  /** Bits set on disk and still set in memory: a write to such a region needs no log update. */
  private durable: Uint8Array;
  /** The bits of the newest copy on disk, exactly: what a crash now would find. */
  private onDisk: Uint8Array;
  private readonly copyBytes: number;
  private closed = false;
  /** Keeps other processes off the log file while it is open (see FileLock). */
  private lock: FileLock | undefined;
  /** Set: updates go through this device (a fault or power-cut wrapper over the log file) instead of the fd. */
  private device: BlockDevice | undefined;

  /**
   * @param crashPoints the server's crash points (crash toolkit); the mirror
   *   built over this log reaches its own points through the same set.
   */
  private constructor(readonly path: string, private readonly fd: number, readonly state: LogState,
    readonly crashPoints: CrashPoints = new CrashPoints()) {
    this.copyBytes = copyBytesFor(state.regionCount);
    this.durable = new Uint8Array(state.dirty);
    this.onDisk = new Uint8Array(state.dirty);
    this.commits = new GroupCommit(() => this.writeNextCopy());
  }

  static async create(path: string, params: CreateLogParams, options: { overwrite?: boolean } = {}): Promise<RegionLog> {
    const { deviceSizeBytes, regionSizeBytes, legUuids } = params;
    if (regionSizeBytes < 4096 || (regionSizeBytes & (regionSizeBytes - 1)) !== 0 || regionSizeBytes > 2 ** 31) {
      throw new RegionLogError(path, `region size ${regionSizeBytes} must be a power of two between 4 KiB and 2 GiB`);
    }
    if (legUuids.length < 1 || legUuids.length > legSlotsMax) {
      throw new RegionLogError(path, `${legUuids.length} legs; a mirror has 1..${legSlotsMax}`);
    }
    const regionCount = Math.ceil(deviceSizeBytes / regionSizeBytes);
    const state: LogState = {
      mirrorUuid: params.mirrorUuid ?? randomBytes(16),
      regionSizeBytes,
      deviceSizeBytes,
      regionCount,
      sequence: 0n,
      cleanShutdown: !params.legsMayDiffer,
      labelUpdatePending: false,
      eventsCurrent: 1n,
      eventsPrevious: 1n,
      legs: legUuids.map((uuid): LegRecord => ({
        uuid, state: 'in_sync', rebuildMode: 'none', events: 1n, rebuildCheckpointBytes: 0, failedAtMs: 0, heldByOperator: false,
      })),
      dirty: new Uint8Array(bitmapBytesFor(regionCount)),
    };
    if (params.legsMayDiffer) {
      for (let region = 0; region < regionCount; region += 1) state.dirty[region >> 3] |= 1 << (region & 7);
    }
    let fd: number;
    try {
      fd = fs.openSync(path, options.overwrite ? 'w+' : 'wx+');
    } catch (error) {
      throw new RegionLogError(path, `cannot create: ${(error as Error).message}`);
    }
    // Both copies hold the initial state, so either may be the one a later update replaces.
    const copyBytes = copyBytesFor(regionCount);
    const deviceBytes = fs.fstatSync(fd).isBlockDevice() ? fileOrDeviceSize(fd, path) : undefined;
    if (deviceBytes !== undefined && deviceBytes < 2 * copyBytes) {
      fs.closeSync(fd);
      throw new RegionLogError(path, `the device holds ${deviceBytes} bytes; a log of ${regionCount} regions needs ${2 * copyBytes}`);
    }
    fs.writeSync(fd, encodeCopy(state), 0, copyBytes, 0);
    fs.writeSync(fd, encodeCopy({ ...state, sequence: 1n }), 0, copyBytes, copyBytes);
    fs.fsyncSync(fd);
    state.sequence = 1n;
    return new RegionLog(path, fd, state);
  }

  /** Reads both copies and keeps the newest valid one; refuses a log it cannot trust. */
  static open(path: string, options: { readOnly?: boolean; crashPoints?: CrashPoints } = {}): RegionLog {
    let fd: number;
    try {
      fd = fs.openSync(path, options.readOnly ? 'r' : 'r+');
    } catch (error) {
      throw new RegionLogError(path, `cannot open: ${(error as Error).message}`);
    }
    let lock: FileLock | undefined;
    try {
      lock = FileLock.acquire(path, options.readOnly ? 'shared' : 'exclusive', 'region log');
      const log = new RegionLog(path, fd, RegionLog.readNewest(path, fd), options.crashPoints);
      log.lock = lock;
      return log;
    } catch (error) {
      fs.closeSync(fd);
      lock?.release();
      throw error;
    }
  }

  /** Reads the newest valid copy without keeping the file open (dump-log, offline status). */
  static inspect(path: string): { state: LogState; copies: Array<{ sequence?: bigint; error?: string }> } {
    const fd = fs.openSync(path, 'r');
    try {
      const copies = RegionLog.readCopies(path, fd);
      return { state: RegionLog.pickNewest(path, copies), copies: copies.map((copy) =>
        ('state' in copy ? { sequence: copy.state.sequence } : { error: copy.error })) };
    } finally {
      fs.closeSync(fd);
    }
  }

  private static readCopies(path: string, fd: number): Array<{ state: LogState } | { error: string }> {
    const stat = fs.fstatSync(fd);
    if (stat.isBlockDevice()) return RegionLog.readDeviceCopies(path, fd);
    const { size } = stat;
    if (size < 2 * headerBytes) throw new RegionLogError(path, `truncated: ${size} bytes, smaller than two headers`);
    if (size > logBytesMax) throw new RegionLogError(path, `${size} bytes is too large to be a region log`);
    const whole = Buffer.alloc(size);
    fs.readSync(fd, whole, 0, size, 0);
    const half = Math.floor(size / 2);
    return [whole.subarray(0, half), whole.subarray(half)].map((copy, index) => {
      try {
        const state = decodeCopy(copy);
        if (copyBytesFor(state.regionCount) * 2 !== size) {
          return { error: `copy ${index}: file is ${size} bytes, expected ${copyBytesFor(state.regionCount) * 2} (truncated or extended)` };
        }
        return { state };
      } catch (error) {
        if (error instanceof LogFormatError) return { error: `copy ${index}: ${error.message}` };
        throw error;
      }
    });
  }

  private static pickNewest(path: string, copies: Array<{ state: LogState } | { error: string }>): LogState {
    const valid = copies.flatMap((copy) => ('state' in copy ? [copy.state] : []));
    if (valid.length === 0) {
      throw new RegionLogError(path, `no valid copy: ${copies.map((copy) => ('error' in copy ? copy.error : '')).join('; ')}`);
    }
    if (valid.length === 2 && !valid[0].mirrorUuid.equals(valid[1].mirrorUuid)) {
      throw new RegionLogError(path, 'the two copies belong to different mirrors');
    }
    return valid.reduce((newest, copy) => (copy.sequence > newest.sequence ? copy : newest));
  }

  private static readNewest(path: string, fd: number): LogState {
    return RegionLog.pickNewest(path, RegionLog.readCopies(path, fd));
  }

  isDirty(region: number): boolean {
    return (this.state.dirty[region >> 3] & (1 << (region & 7))) !== 0;
  }

  isDurablyDirty(region: number): boolean {
    return (this.durable[region >> 3] & (1 << (region & 7))) !== 0;
  }

  setDirty(region: number): void {
    this.state.dirty[region >> 3] |= 1 << (region & 7);
  }

  clearDirty(region: number): void {
    const mask = ~(1 << (region & 7)) & 0xff;
    this.state.dirty[region >> 3] &= mask;
    this.durable[region >> 3] &= mask;
  }

  dirtyRegions(): number[] {
    return regionsSet(this.state.dirty, this.state.regionCount);
  }

  get commitsRun(): number {
    return this.commits.roundsRun;
  }

  /**
   * A block device has no file size to halve: the copies sit as in a file
   * (copy 1 right after copy 0), the rest of the device unused. Copy 0's
   * header says where copy 1 starts; when that header is gone (torn, or
   * overwritten), every 4 KiB offset is tried, and only a copy whose own
   * header puts it exactly there and whose checksum holds is taken.
   */
  private static readDeviceCopies(path: string, fd: number): Array<{ state: LogState } | { error: string }> {
    const deviceBytes = fileOrDeviceSize(fd, path);
    const readAt = (position: number, length: number): Buffer => {
      const buffer = Buffer.alloc(length);
      fs.readSync(fd, buffer, 0, length, position);
      return buffer;
    };
    const decodeAt = (position: number, copyBytes: number | undefined, index: number): { state: LogState } | { error: string } => {
      if (copyBytes === undefined) return { error: `copy ${index}: no region log header found` };
      if (position + copyBytes > deviceBytes) return { error: `copy ${index}: the device ends inside it (${deviceBytes} bytes)` };
      try {
        return { state: decodeCopy(readAt(position, copyBytes)) };
      } catch (error) {
        if (error instanceof LogFormatError) return { error: `copy ${index}: ${error.message}` };
        throw error;
      }
    };
    if (deviceBytes < 2 * headerBytes) throw new RegionLogError(path, `the device holds ${deviceBytes} bytes, fewer than two headers`);
    let copyBytes = copyBytesOfHeader(readAt(0, headerBytes));
    const first = decodeAt(0, copyBytes, 0);
    if (copyBytes === undefined) {
      const lastCandidate = Math.min(Math.floor(deviceBytes / 2), logBytesMax / 2);
      for (let position = 2 * headerBytes; position <= lastCandidate && copyBytes === undefined; position += headerBytes) {
        if (copyBytesOfHeader(readAt(position, headerBytes)) === position) copyBytes = position;
      }
    }
    return [first, decodeAt(copyBytes ?? 0, copyBytes, 1)];
  }

  /** Makes the current in-memory state durable; resolves once a write that started after this call is synced. */
  commit(): Promise<void> {
    if (this.closed) return Promise.reject(new BlockError('ESHUTDOWN', `region log ${this.path} is closed`));
    return this.commits.run();
  }

  /**
   * Sends later updates through a block device over this log's file (the
   * crash toolkit's fault, power-cut and write-log devices). Reads at open
   * still come from the file itself.
   */
  routeUpdatesThrough(device: BlockDevice): void {
    if (device.sizeBytes < 2 * this.copyBytes) throw new RegionLogError(this.path, 'the device routed to is smaller than the log');
    this.device = device;
  }

  private async writeNextCopy(): Promise<void> {
    const sequence = this.state.sequence + 1n;
    const snapshot = new Uint8Array(this.state.dirty);
    const encoded = encodeCopy({ ...this.state, sequence, dirty: snapshot });
    const position = Number(sequence % 2n) * this.copyBytes;
    try {
      if (this.device) await this.device.write(position, encoded, noFlags);
      else await pwriteAll(this.fd, encoded, position);
      if (this.crashPoints.armed && clearsBits(this.onDisk, snapshot)) await this.crashPoints.reach('regionlog.clearing-bits');
      if (this.device) await this.device.flush();
      else await fdatasync(this.fd);
    } catch (error) {
      throw toBlockError(error, `region log ${this.path}: update failed`);
    }
    this.state.sequence = sequence;
    this.onDisk = snapshot;
    // A bit cleared after the snapshot was taken must not count as durable.
    for (let byte = 0; byte < snapshot.length; byte += 1) this.durable[byte] = snapshot[byte] & this.state.dirty[byte];
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.device?.close();
    await closeFd(this.fd);
    this.lock?.release();
  }
}

function clearsBits(onDisk: Uint8Array, next: Uint8Array): boolean {
  return onDisk.some((byte, index) => (byte & ~next[index]) !== 0);
}
