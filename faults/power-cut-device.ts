import { RangeOrder } from '../blockdev/range-order.js';
import type { BlockDevice, Extent, WriteFlags, ZeroFlags } from '../blockdev/types.js';
import { seededRandom } from './seeded-random.js';

/**
 * What a power cut does to the sectors written since the last flush:
 * `keep` all of them, `drop` all of them, or `torn`: each sector
 * independently kept or dropped, so one write can survive in part.
 * A sector is the disk's atomic unit (`sectorBytes`): a cut never splits one.
 */
export type CutPolicy = 'keep' | 'drop' | 'torn';
export const cutPolicies: CutPolicy[] = ['keep', 'drop', 'torn'];

export interface PowerCutOptions {
  /** Names the device in reports ("leg0", "log"). */
  name: string;
  policy: CutPolicy;
  seed: number;
  /**
   * The unit a cut keeps or drops whole, like a disk's physical sector
   * (default 512, the finest a disk tears). Filesystems assume more: ext4
   * rewrites its 1 KiB superblock in place and cannot mount it half old, half
   * new, which a 4096-byte physical sector (and the host page a file leg is
   * written back in) never produces.
   */
  sectorBytes?: number;
  /** The server's devices a crash cuts together; this one joins it. */
  registry: PowerCutRegistry;
}

export const defaultSectorBytes = 512;

export function validSectorBytes(bytes: number): boolean {
  return Number.isInteger(bytes) && bytes >= 512 && bytes <= 65536 && (bytes & (bytes - 1)) === 0;
}

export interface CutReport {
  name: string;
  policy: CutPolicy;
  volatileSectors: number;
  keptSectors: number;
  droppedSectors: number;
}

/**
 * Models a disk with a volatile write cache (FoundationDB's non-durable file,
 * SQLite's crash VFS). Writes reach the device below at once, but until a
 * flush (or FUA, for its own sectors) completes, the device remembers what
 * each written sector held before: when the power is cut, those sectors keep
 * the new bytes, go back to the old ones, or tear, as the policy says.
 *
 * A flush waits for running writes and holds new ones until it completes, so
 * "durable" always means exactly the writes completed before the flush began.
 * Once the cut starts nothing is answered any more: a request the layer above
 * is waiting for never completes, so no client is told about work the cut may
 * undo.
 */
export class PowerCutDevice implements BlockDevice {
  readonly sizeBytes: number;
  readonly blockSizeBytes: number;
  readonly capabilities;
  /** Sector index to the bytes it durably held before the first unflushed change. */
  private readonly volatile = new Map<number, Buffer>();
  private readonly order = new RangeOrder();
  private writesRunning = 0;
  private writesDrained: (() => void) | undefined;
  private flushGate: Promise<void> | undefined;
  private flushQueue: Promise<void> = Promise.resolve();
  private innerRunning = new Set<Promise<unknown>>();
  private cutting = false;
  private readonly random: () => number;
  private readonly sectorBytes: number;
  /** Runs when a cut begins, before anything is rolled back (a write log below records the cut). */
  onCut: (() => void) | undefined;

  constructor(readonly inner: BlockDevice, readonly options: PowerCutOptions) {
    this.sectorBytes = options.sectorBytes ?? defaultSectorBytes;
    if (!validSectorBytes(this.sectorBytes)) throw new RangeError(`sectorBytes ${this.sectorBytes}: must be a power of two from 512 to 65536`);
    this.sizeBytes = inner.sizeBytes;
    this.blockSizeBytes = inner.blockSizeBytes;
    this.capabilities = inner.capabilities;
    this.random = seededRandom(options.seed);
    // A leg reopened on re-add replaces its old model: the old one's unflushed history no longer describes the disk.
    options.registry.add(this);
  }

  /** Sectors a cut could lose right now. */
  get volatileSectors(): number {
    return this.volatile.size;
  }

  private hold(): Promise<never> {
    return new Promise<never>(() => {});
  }

  private async onInner<T>(operation: () => Promise<T>): Promise<T> {
    if (this.cutting) return this.hold();
    const running = operation();
    this.innerRunning.add(running);
    try {
      return await running;
    } finally {
      this.innerRunning.delete(running);
      if (this.cutting) await this.hold();
    }
  }

  async read(offsetBytes: number, target: Buffer): Promise<void> {
    return this.onInner(() => this.inner.read(offsetBytes, target));
  }

  write(offsetBytes: number, data: Buffer, flags: WriteFlags): Promise<void> {
    return this.change(offsetBytes, data.length, flags.fua, () => this.inner.write(offsetBytes, data, flags));
  }

  trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void> {
    return this.change(offsetBytes, lengthBytes, flags.fua, () => this.inner.trim(offsetBytes, lengthBytes, flags));
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    return this.change(offsetBytes, lengthBytes, flags.fua, () => this.inner.writeZeroes(offsetBytes, lengthBytes, flags));
  }

  private async change(offsetBytes: number, lengthBytes: number, fua: boolean, apply: () => Promise<void>): Promise<void> {
    while (this.flushGate) await this.flushGate;
    if (this.cutting) return this.hold();
    this.writesRunning += 1;
    const first = Math.floor(offsetBytes / this.sectorBytes);
    const end = Math.ceil((offsetBytes + lengthBytes) / this.sectorBytes);
    // Overlapping changes take turns here, so each sector's remembered bytes are what preceded the first of them.
    const ticket = this.order.acquire(first * this.sectorBytes, (end - first) * this.sectorBytes, true);
    try {
      if (ticket.ready) await ticket.ready;
      await this.rememberDurable(first, end);
      await this.onInner(apply);
      if (fua) for (let sector = first; sector < end; sector += 1) this.volatile.delete(sector);
    } finally {
      ticket.release();
      this.writesRunning -= 1;
      if (this.writesRunning === 0) this.writesDrained?.();
    }
  }

  /** Reads what the sectors not yet changed since the last flush hold: that is what a cut may go back to. */
  private async rememberDurable(first: number, end: number): Promise<void> {
    let runStart = -1;
    for (let sector = first; sector <= end; sector += 1) {
      const missing = sector < end && !this.volatile.has(sector);
      if (missing && runStart < 0) runStart = sector;
      if (!missing && runStart >= 0) {
        const startBytes = runStart * this.sectorBytes;
        // A device whose size is not a whole number of sectors ends in a short one.
        const bytes = Buffer.alloc(Math.min(sector * this.sectorBytes, this.sizeBytes) - startBytes);
        await this.onInner(() => this.inner.read(startBytes, bytes));
        for (let index = runStart; index < sector; index += 1) {
          // A sector may have been remembered meanwhile only by an overlapping change, which the range order excludes.
          this.volatile.set(index, bytes.subarray((index - runStart) * this.sectorBytes, (index - runStart + 1) * this.sectorBytes));
        }
        runStart = -1;
      }
    }
  }

  flush(): Promise<void> {
    const run = this.flushQueue.then(() => this.flushOnce());
    this.flushQueue = run.catch(() => {});
    return run;
  }

  private async flushOnce(): Promise<void> {
    let openGate!: () => void;
    this.flushGate = new Promise((resolve) => { openGate = resolve; });
    try {
      if (this.writesRunning > 0) await new Promise<void>((resolve) => { this.writesDrained = resolve; });
      this.writesDrained = undefined;
      await this.onInner(() => this.inner.flush());
      this.volatile.clear();
    } finally {
      this.flushGate = undefined;
      openGate();
    }
  }

  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    return this.onInner(() => this.inner.blockStatus(offsetBytes, lengthBytes));
  }

  /** Stops answering anything; the first step of a cut, taken on every device before any is rolled back. */
  stopAnswering(): void {
    this.cutting = true;
  }

  /**
   * Rolls back the unflushed sectors the policy drops. Runs after
   * stopAnswering, once the device below has finished what it was given.
   */
  async rollBack(settleTimeoutMs = 5000): Promise<CutReport> {
    const deadline = Date.now() + settleTimeoutMs;
    while (this.innerRunning.size > 0 && Date.now() < deadline) {
      await Promise.race([Promise.allSettled([...this.innerRunning]), new Promise((resolve) => setTimeout(resolve, 50))]);
    }
    this.onCut?.();
    const report: CutReport = { name: this.options.name, policy: this.options.policy, volatileSectors: this.volatile.size,
      keptSectors: 0, droppedSectors: 0 };
    const sectors = [...this.volatile.keys()].sort((a, b) => a - b);
    for (const sector of sectors) {
      const drop = this.options.policy === 'drop' || (this.options.policy === 'torn' && this.random() < 0.5);
      if (!drop) {
        report.keptSectors += 1;
        continue;
      }
      await this.inner.write(sector * this.sectorBytes, this.volatile.get(sector)!, { fua: false });
      report.droppedSectors += 1;
    }
    this.volatile.clear();
    return report;
  }

  async close(): Promise<void> {
    this.options.registry.remove(this);
    await this.inner.close();
  }
}

/**
 * The power-cut devices of one server: a crash cuts them all in the same
 * turn. Handed to each device by whoever composes the stack (see
 * CrashPoints), never a module global.
 */
export class PowerCutRegistry {
  private readonly devices = new Map<string, PowerCutDevice>();

  add(device: PowerCutDevice): void {
    this.devices.set(device.options.name, device);
  }

  remove(device: PowerCutDevice): void {
    if (this.devices.get(device.options.name) === device) this.devices.delete(device.options.name);
  }

  get size(): number {
    return this.devices.size;
  }

  /**
   * Cuts the power to every device at once: all stop answering in the same
   * turn of the event loop, then each rolls back what its policy drops. The
   * caller ends the process right after (see crash-points).
   */
  async cutAll(): Promise<CutReport[]> {
    const devices = [...this.devices.values()];
    for (const device of devices) device.stopAnswering();
    return Promise.all(devices.map((device) => device.rollBack()));
  }
}
