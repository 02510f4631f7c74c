import assert from 'node:assert/strict';
import type { Logger } from 'pino';
import type { BlockDevice } from '../blockdev/types.js';
import type { RegionLog } from '../regionlog/region-log.js';
import { Generation, type MirrorLeg } from './generation.js';

/**
 * The mirror's generations (lesson 4): the current one, which new requests
 * enter, and older ones still held by running requests. A leg no generation
 * holds any more is closed once the last request on it finishes, never
 * under one.
 */
export class Generations {
  private currentGeneration: Generation;
  private count = 0;
  /** Replaced generations that running requests still hold. */
  private readonly live = new Set<Generation>();
  /** Devices of detached legs still closing: a re-add of the same block device waits for its claim to go. */
  private readonly closing = new Set<Promise<void>>();

  constructor(private readonly log: RegionLog, private readonly logger: Logger, legs: ReadonlyArray<MirrorLeg | undefined>) {
    this.currentGeneration = this.make(legs);
  }

  get current(): Generation {
    return this.currentGeneration;
  }

  /** Publishes a new generation; legs no running request can still hold are closed once their generations drain. */
  replace(legs: ReadonlyArray<MirrorLeg | undefined>): Generation {
    const previous = this.currentGeneration;
    this.currentGeneration = this.make(legs);
    if (previous.refs === 0) this.retire(previous);
    else this.live.add(previous);
    return this.currentGeneration;
  }

  enter(): Generation {
    const generation = this.currentGeneration;
    generation.refs += 1;
    return generation;
  }

  exit(generation: Generation): void {
    // A request leaves the generation it entered, once: a second exit would retire one still in use under another.
    if (generation.refs <= 0) assert.fail(`generation ${generation.number} exited more often than entered`);
    generation.refs -= 1;
    if (generation.refs === 0 && generation !== this.currentGeneration && this.live.has(generation)) this.retire(generation);
  }

  /** Resolves once every detached leg's device is closed (its file lock and block-device claim released). */
  async detachedLegsClosed(): Promise<void> {
    while (this.closing.size > 0) await Promise.all([...this.closing]);
  }

  /** Every device any generation still holds (closing the mirror closes them). */
  devices(): Set<BlockDevice> {
    const devices = new Set<BlockDevice>();
    for (const generation of [this.currentGeneration, ...this.live]) for (const leg of generation.legs) if (leg) devices.add(leg.device);
    return devices;
  }

  private make(legs: ReadonlyArray<MirrorLeg | undefined>): Generation {
    this.count += 1;
    const states = this.log.state.legs.map((record, slot) => (legs[slot] === undefined && record.state === 'in_sync'
      ? 'faulty' : record.state));
    return new Generation(this.count, legs, states);
  }

  private retire(generation: Generation): void {
    this.live.delete(generation);
    const stillUsed = this.devices();
    for (const leg of generation.legs) {
      if (leg && !stillUsed.has(leg.device)) {
        const closing = leg.device.close().catch((error: unknown) => this.logger.warn({ err: error, slot: leg.slot }, 'closing a detached leg failed'));
        this.closing.add(closing);
        void closing.finally(() => this.closing.delete(closing));
      }
    }
  }
}
