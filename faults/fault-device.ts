import { BlockError, type BlockErrorCode } from '../blockdev/errors.js';
import type { BlockDevice, Extent, WriteFlags, ZeroFlags } from '../blockdev/types.js';
import { seededRandom } from './seeded-random.js';

export type FaultOp = 'read' | 'write' | 'flush' | 'trim' | 'zeroes';
export const faultOps: FaultOp[] = ['read', 'write', 'flush', 'trim', 'zeroes'];

export interface FaultRule {
  ops: FaultOp[];
  error: Extract<BlockErrorCode, 'EIO' | 'ENOSPC' | 'EINVAL'>;
  /** Fail only after this many matching operations succeeded (0: at once). */
  afterOps?: number;
  /** Only operations overlapping [start, end) bytes; flush always matches. */
  rangeBytes?: [number, number];
  /** Fail each matching operation with this probability (seeded). */
  rate?: number;
  /** Keep failing once triggered (a dead disk) rather than counting again. */
  sticky?: boolean;
  /** Rule starts disabled; `trigger()` arms it (a fault the test controls). */
  armed?: boolean;
}

export interface FaultPlan {
  rules: FaultRule[];
  latencyMs?: number;
  seed?: number;
  /**
   * A disk whose write cache lies: flushes succeed without reaching the
   * device below, and FUA writes go down as plain writes. Nothing above can
   * notice; the crash tests use it to show their oracle catches lost data.
   */
  ignoreDurability?: boolean;
}

interface RuleState {
  rule: FaultRule;
  seen: number;
  fired: boolean;
  armed: boolean;
}

/**
 * A block device that passes everything to the one below it, except when a
 * rule says to fail. It slides under a mirror leg or a log in tests and in the
 * crash toolkit, configured from YAML or by the test itself.
 */
export class FaultDevice implements BlockDevice {
  readonly sizeBytes: number;
  readonly blockSizeBytes: number;
  readonly capabilities;
  private readonly states: RuleState[];
  private readonly random: () => number;
  private gate: Promise<void> | undefined;
  private openGate: (() => void) | undefined;
  /** Operations failed so far, by kind (tests assert the fault really happened). */
  readonly injected: Record<FaultOp, number> = { read: 0, write: 0, flush: 0, trim: 0, zeroes: 0 };
  /** Flushes and FUA writes acknowledged without their durability (ignoreDurability). */
  durabilityIgnored = 0;

  constructor(readonly inner: BlockDevice, private plan: FaultPlan = { rules: [] }) {
    this.sizeBytes = inner.sizeBytes;
    this.blockSizeBytes = inner.blockSizeBytes;
    this.capabilities = inner.capabilities;
    this.states = plan.rules.map((rule) => ({ rule, seen: 0, fired: false, armed: rule.armed ?? true }));
    this.random = seededRandom(plan.seed ?? 1);
  }

  /** Arms every rule that started disabled. */
  trigger(): void {
    for (const state of this.states) state.armed = true;
  }

  /** Disarms every rule: the disk is healthy again. */
  heal(): void {
    for (const state of this.states) {
      state.armed = false;
      state.fired = false;
      state.seen = 0;
    }
  }

  addRule(rule: FaultRule): void {
    this.states.push({ rule, seen: 0, fired: false, armed: rule.armed ?? true });
  }

  /** Holds every write, trim and write-zeroes before it reaches the device, until the returned function runs. */
  holdWrites(): () => void {
    if (this.gate === undefined) this.gate = new Promise((resolve) => { this.openGate = resolve; });
    return () => {
      this.openGate?.();
      this.gate = undefined;
      this.openGate = undefined;
    };
  }

  private async before(op: FaultOp, offsetBytes: number, lengthBytes: number): Promise<void> {
    if (this.plan.latencyMs) await new Promise((resolve) => setTimeout(resolve, this.plan.latencyMs));
    if (op !== 'read' && op !== 'flush') while (this.gate) await this.gate;
    for (const state of this.states) {
      const { rule } = state;
      if (!state.armed || !rule.ops.includes(op)) continue;
      if (rule.rangeBytes && op !== 'flush' &&
          (offsetBytes + lengthBytes <= rule.rangeBytes[0] || offsetBytes >= rule.rangeBytes[1])) continue;
      let fail: boolean;
      if (state.fired && rule.sticky) fail = true;
      else if (state.seen < (rule.afterOps ?? 0)) fail = false;
      else fail = rule.rate === undefined || this.random() < rule.rate;
      state.seen += 1;
      if (fail) {
        state.fired = true;
        this.injected[op] += 1;
        throw new BlockError(rule.error, `injected ${rule.error} on ${op} at ${offsetBytes}+${lengthBytes}`);
      }
    }
  }

  async read(offsetBytes: number, target: Buffer): Promise<void> {
    await this.before('read', offsetBytes, target.length);
    return this.inner.read(offsetBytes, target);
  }

  async write(offsetBytes: number, data: Buffer, flags: WriteFlags): Promise<void> {
    await this.before('write', offsetBytes, data.length);
    return this.inner.write(offsetBytes, data, this.passedOn(flags));
  }

  async flush(): Promise<void> {
    await this.before('flush', 0, 0);
    if (this.plan.ignoreDurability) {
      this.durabilityIgnored += 1;
      return;
    }
    return this.inner.flush();
  }

  async trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void> {
    await this.before('trim', offsetBytes, lengthBytes);
    return this.inner.trim(offsetBytes, lengthBytes, this.passedOn(flags));
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    await this.before('zeroes', offsetBytes, lengthBytes);
    return this.inner.writeZeroes(offsetBytes, lengthBytes, this.passedOn(flags));
  }

  /** The flags the device below sees: without FUA when this disk lies about durability. */
  private passedOn<Flags extends WriteFlags>(flags: Flags): Flags {
    if (!this.plan.ignoreDurability || !flags.fua) return flags;
    this.durabilityIgnored += 1;
    return { ...flags, fua: false };
  }

  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    return this.inner.blockStatus(offsetBytes, lengthBytes);
  }

  close(): Promise<void> {
    this.openGate?.();
    return this.inner.close();
  }
}
