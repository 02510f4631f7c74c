import type { FaultDevice } from '../../faults/fault-device.js';
import type { ThinSpec } from '../../backends/leg-spec.js';
import type { MirrorController } from '../../mirror/controller.js';
import { PageCache, type PageCacheOptions } from '../../pagecache/page-cache.js';
import { shutdownTopDown } from '../../stack/top-down.js';
import { mirrorFixture, type MirrorFixture, silentLogger } from './mirror-fixture.js';

const MiB = 1024 * 1024;
export const cacheStackSizeBytes = 16 * MiB;

export interface CacheStack {
  fixture: MirrorFixture;
  mirror: MirrorController;
  cache: PageCache;
  faults: FaultDevice[];
}

export function cacheOptions(overrides: Partial<PageCacheOptions> = {}): PageCacheOptions {
  return {
    capacityBytes: 8 * MiB, dirtyLimitBytes: 4 * MiB, dirtyExpireMs: 60_000, writebackIntervalMs: 0,
    noSpacePolicy: 'error', noSpaceTimeoutMs: 0, logger: silentLogger, ...overrides,
  };
}

/** Cache over a two-leg mirror; every leg has a fault wrapper with no rules, for the test to add some. */
export async function cacheOverMirror(t: { teardown(fn: () => void | Promise<void>): void }, options: { cache?: Partial<PageCacheOptions>;
  thin?: Array<ThinSpec | undefined>; } = {}): Promise<CacheStack> {
  const fixture = mirrorFixture({ sizeBytes: cacheStackSizeBytes, faults: [{ rules: [] }, { rules: [] }], thin: options.thin });
  const mirror = await fixture.open();
  const cache = new PageCache(mirror.device, cacheOptions(options.cache));
  t.teardown(async () => {
    await cache.close().catch(() => undefined);
    fixture.cleanup();
  });
  return { fixture, mirror, cache, faults: mirror.faults as FaultDevice[] };
}

export function fill(byte: number, length: number): Buffer {
  return Buffer.alloc(length, byte);
}

export async function readBack(device: { read(offset: number, target: Buffer): Promise<void> }, offset: number, length: number): Promise<Buffer> {
  const target = Buffer.alloc(length);
  await device.read(offset, target);
  return target;
}

export async function shutDown(s: CacheStack): Promise<void> {
  await shutdownTopDown({ mirror: s.mirror, cache: s.cache }, silentLogger);
  await s.cache.close();
}

