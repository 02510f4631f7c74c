import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { FileLeg } from '../../backends/file-leg.js';
import { type BlockDevice, type Extent, finishedNow, type WriteFlags, type ZeroFlags } from '../../blockdev/types.js';
import { PowerCutDevice, PowerCutRegistry } from '../../faults/power-cut-device.js';
import { PageCache } from '../../pagecache/page-cache.js';
import { cacheOptions, cacheOverMirror, cacheStackSizeBytes, fill, readBack, shutDown } from '../helpers/cache-stack.js';
import { legContents, legsIdentical } from '../helpers/mirror-fixture.js';
import { makeTempDir } from '../helpers/tools.js';
import { ManualClock } from '../../sys/clock.js';

const KiB = 1024;
const aroundFrom = 64 * KiB;

/** Passes everything to a real device and notes where each write started, in the order they reached it. */
class WriteWitness implements BlockDevice {
  readonly sizeBytes: number;
  readonly blockSizeBytes: number;
  readonly capabilities;
  readonly writesStarted: Array<[number, number]> = [];

  constructor(private readonly inner: BlockDevice) {
    this.sizeBytes = inner.sizeBytes;
    this.blockSizeBytes = inner.blockSizeBytes;
    this.capabilities = inner.capabilities;
  }

  read(offsetBytes: number, target: Buffer): Promise<void> { return this.inner.read(offsetBytes, target); }
  write(offsetBytes: number, data: Buffer, flags: WriteFlags): Promise<void> {
    this.writesStarted.push([offsetBytes, data.length]);
    return this.inner.write(offsetBytes, data, flags);
  }
  flush(): Promise<void> { return this.inner.flush(); }
  trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void> { return this.inner.trim(offsetBytes, lengthBytes, flags); }
  writeZeroes(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    return this.inner.writeZeroes(offsetBytes, lengthBytes, flags);
  }
  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> { return this.inner.blockStatus(offsetBytes, lengthBytes); }
  close(): Promise<void> { return this.inner.close(); }
}

function settledYet(promise: Promise<unknown>): () => boolean {
  let settled = false;
  void promise.then(() => { settled = true; }, () => { settled = true; });
  return () => settled;
}

test('a large write goes around the cache, supersedes older cached pages of its range, and caches only its partial end pages', async (t) => {
  t.timeout(30_000);
  const s = await cacheOverMirror(t, { cache: { writeAroundBytes: aroundFrom } });
  const { cache, fixture } = s;
  for (const page of [1, 2, 3]) await cache.write(page * 4096, fill(1, 4096), { fua: false });
  t.is(cache.status().dirtyBytes, 3 * 4096);
  // [2048, 133120): whole pages [4096, 131072) go around; [2048, 4096) and [131072, 133120) are cached.
  await cache.write(2048, fill(2, 128 * KiB), { fua: false });
  t.is(cache.stats.writesAround, 1);
  t.is(cache.stats.bytesWrittenAround, 131072 - 4096);
  t.is(cache.status().dirtyBytes, 2 * 4096, 'only the two partial end pages are dirty; the older pages inside were dropped');
  const expected = Buffer.concat([Buffer.alloc(2048), fill(2, 128 * KiB), Buffer.alloc(2048)]);
  t.true((await readBack(cache, 0, expected.length)).equals(expected), 'reads return the large write, not the older cached pages');
  for (const leg of fixture.settings.legs) {
    const data = await legContents(leg, cacheStackSizeBytes);
    t.true(data.subarray(4096, 131072).equals(fill(2, 131072 - 4096)), 'the whole pages reached every leg before the reply');
  }
  await cache.flush();
  await shutDown(s);
  for (const leg of fixture.settings.legs) {
    t.true((await legContents(leg, cacheStackSizeBytes)).subarray(0, expected.length).equals(expected));
  }
  t.true(legsIdentical(fixture.legPaths, cacheStackSizeBytes).identical);
});

test('a write around waits for a writeback of its range already in flight, and a cached write of the range waits for it', async (t) => {
  t.timeout(30_000);
  const s = await cacheOverMirror(t);
  const witness = new WriteWitness(s.mirror.device);
  const cache = new PageCache(witness, cacheOptions({ writeAroundBytes: aroundFrom }));
  t.teardown(() => cache.close().catch(() => undefined));
  await cache.write(8192, fill(1, 4096), { fua: false });
  const releases = s.faults.map((fault) => fault.holdWrites());
  // A failed assertion ends the test here: the held writes must not outlive it.
  t.teardown(() => { for (const release of releases) release(); });
  // The flush's writeback of the old page is in flight, held below the mirror.
  const flushing = cache.flush();
  await new Promise((resolve) => setTimeout(resolve, 20));
  t.deepEqual(witness.writesStarted, [[8192, 4096]]);
  const around = cache.write(0, fill(2, 128 * KiB), { fua: false });
  await new Promise((resolve) => setTimeout(resolve, 20));
  t.deepEqual(witness.writesStarted, [[8192, 4096]], 'the large write did not go down while an older writeback of its range was in flight');
  // A small write to the range now is newer than the large one: it must land after it.
  const later = cache.write(20480, fill(3, 4096), { fua: false });
  const laterDone = settledYet(later);
  await new Promise((resolve) => setTimeout(resolve, 20));
  t.false(laterDone(), 'the cached write waits at the gate while the large write is in flight');
  for (const release of releases) release();
  await Promise.all([flushing, around, later]);
  t.deepEqual(witness.writesStarted, [[8192, 4096], [0, 128 * KiB]]);
  const expected = fill(2, 128 * KiB);
  fill(3, 4096).copy(expected, 20480);
  t.true((await readBack(cache, 0, expected.length)).equals(expected), 'the later cached write wins over the large write');
  t.is(cache.status().dirtyBytes, 4096);
  await cache.flush();
  await cache.close();
  await s.mirror.shutdown();
  for (const leg of s.fixture.settings.legs) {
    t.true((await legContents(leg, cacheStackSizeBytes)).subarray(0, expected.length).equals(expected),
      'the old writeback landed first, then the large write, then the later small one');
  }
});

test('a flush covers written-around and cached writes alike; without a flush a power cut takes a written-around write back', async (t) => {
  t.timeout(30_000);
  const dir = makeTempDir('write-around-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const registry = new PowerCutRegistry();
  const leg = await FileLeg.open({ path: path.join(dir, 'leg.img'), createSizeBytes: 1024 * KiB });
  const powerCut = new PowerCutDevice(leg, { name: 'write-around', policy: 'drop', seed: 1, registry });
  const cache = new PageCache(powerCut, cacheOptions({ writeAroundBytes: aroundFrom }));
  await cache.write(0, fill(1, 128 * KiB), { fua: false });
  await cache.write(200 * KiB, fill(2, 4096), { fua: false });
  t.is(cache.stats.writesAround, 1);
  t.is(cache.status().dirtyBytes, 4096);
  await cache.flush();
  await cache.write(256 * KiB, fill(3, 64 * KiB), { fua: false });
  await cache.write(512 * KiB, fill(4, 64 * KiB), { fua: true });
  t.is(cache.stats.writesAround, 3);
  await registry.cutAll();
  const image = fs.readFileSync(path.join(dir, 'leg.img'));
  t.true(image.subarray(0, 128 * KiB).equals(fill(1, 128 * KiB)), 'the flushed large write survived');
  t.true(image.subarray(200 * KiB, 204 * KiB).equals(fill(2, 4096)), 'the flushed cached write survived');
  t.true(image.subarray(256 * KiB, 320 * KiB).equals(Buffer.alloc(64 * KiB)), 'the unflushed large write was volatile, as any write');
  t.true(image.subarray(512 * KiB, 576 * KiB).equals(fill(4, 64 * KiB)), 'a FUA large write is durable when acknowledged');
  void cache.close().catch(() => undefined);
});

test('ENOSPC during a write around: the write fails as ENOSPC, older dirty pages of its range stay and are read, and a later flush succeeds', async (t) => {
  t.timeout(30_000);
  const s = await cacheOverMirror(t, { cache: { writeAroundBytes: aroundFrom } });
  const { cache, faults, fixture } = s;
  await cache.write(64 * KiB, fill(1, 4096), { fua: false });
  // Only the large write's range is full: the dirty page's own writeback will find space.
  for (const fault of faults) fault.addRule({ ops: ['write'], error: 'ENOSPC', rangeBytes: [128 * KiB, 192 * KiB] });
  const failure = await t.throwsAsync(cache.write(0, fill(2, 256 * KiB), { fua: false }));
  t.is((failure as { code?: string }).code, 'ENOSPC', 'reported as ENOSPC, not EIO');
  t.is(cache.failed, undefined, 'a retryable failure does not fail the cache');
  t.is(cache.status().dirtyBytes, 4096, 'the older acknowledged page was kept');
  t.true((await readBack(cache, 64 * KiB, 4096)).equals(fill(1, 4096)), 'reads return the newest acknowledged bytes of that page');
  await cache.flush();
  for (const leg of fixture.settings.legs) {
    t.true((await legContents(leg, cacheStackSizeBytes)).subarray(64 * KiB, 68 * KiB).equals(fill(1, 4096)));
  }
  for (const fault of faults) fault.heal();
  await cache.write(0, fill(2, 256 * KiB), { fua: false });
  await cache.flush();
  t.true((await readBack(cache, 0, 256 * KiB)).equals(fill(2, 256 * KiB)));
  await shutDown(s);
  t.true(legsIdentical(fixture.legPaths, cacheStackSizeBytes).identical, 'both legs agree once the write is retried');
  for (const leg of fixture.settings.legs) {
    t.true((await legContents(leg, cacheStackSizeBytes)).subarray(0, 256 * KiB).equals(fill(2, 256 * KiB)));
  }
});

test('a write to the uncovered part of a partly trimmed page waits at the gate and lands after the trim', async (t) => {
  t.timeout(30_000);
  const s = await cacheOverMirror(t);
  const { cache, faults } = s;
  await cache.write(4096, fill(1, 4096), { fua: false });
  const releases = faults.map((fault) => fault.holdWrites());
  t.teardown(() => { for (const release of releases) release(); });
  // The flush's writeback of page 1 is in flight, so the trim waits for it while holding its range.
  const flushing = cache.flush();
  await new Promise((resolve) => setTimeout(resolve, 20));
  const trimming = cache.trim(2048, 4096, { fua: false });
  await new Promise((resolve) => setTimeout(resolve, 20));
  // Page 0 is half inside the trim: this write's fill of it waits at the gate until the trim lands.
  const writing = cache.write(0, fill(2, 1024), { fua: false });
  await new Promise((resolve) => setTimeout(resolve, 20));
  for (const release of releases) release();
  await Promise.all([flushing, trimming, writing]);
  const expected = Buffer.concat([fill(2, 1024), Buffer.alloc(1024 + 4096), fill(1, 2048)]);
  t.true((await readBack(cache, 0, 8192)).equals(expected));
  await cache.flush();
  t.true((await readBack(s.mirror.device, 0, 8192)).equals(expected));
  await shutDown(s);
});

/** Options for the small-write tests: the cache is busy once 64 KiB (16 pages) is dirty. */
const busyAt = { writeAroundBytes: aroundFrom, dirtyLimitBytes: 256 * KiB, capacityBytes: 1024 * KiB };
const page = 4096;

/** Dirties 16 pages that neither continue each other nor sit next to each other: the cache is then busy. */
async function makeBusy(cache: PageCache): Promise<void> {
  for (let index = 0; index < 32; index += 2) await cache.write(index * page, fill(1, page), { fua: false });
}

test('small whole-page writes are cached while the cache is quiet; once it is busy one goes around unless caching it saves work', async (t) => {
  t.timeout(30_000);
  const s = await cacheOverMirror(t, { cache: busyAt });
  const { cache, fixture } = s;
  await makeBusy(cache);
  t.is(cache.stats.smallWritesAround, 0, 'below a quarter of the dirty limit every write is cached');
  t.is(cache.status().dirtyBytes, 16 * page);
  const onLegs = async (index: number): Promise<Buffer[]> =>
    Promise.all(fixture.settings.legs.map(async (leg) => (await legContents(leg, cacheStackSizeBytes)).subarray(index * page, (index + 1) * page)));

  await cache.write(100 * page, fill(2, page), { fua: false });
  t.is(cache.stats.smallWritesAround, 1, 'an isolated write to a busy cache goes around');
  t.is(cache.status().dirtyBytes, 16 * page);
  for (const data of await onLegs(100)) t.true(data.equals(fill(2, page)), 'it reached every leg before the reply');

  await cache.write(100 * page, fill(3, page), { fua: false });
  t.is(cache.stats.smallWritesAround, 1, 'a second write to a page written around recently is cached (a hot page)');
  t.is(cache.status().dirtyBytes, 17 * page);
  for (const data of await onLegs(100)) t.true(data.equals(fill(2, page)), 'the cached rewrite is not on the legs yet');

  await cache.write(101 * page, fill(4, page), { fua: false });
  t.is(cache.stats.smallWritesAround, 1, 'a write starting where the last one ended is cached (a stream, coalesced by writeback)');
  await cache.write(2 * page, fill(5, page), { fua: false });
  t.is(cache.stats.smallWritesAround, 1, 'a write over a dirty page is cached (absorbed)');
  await cache.write(200 * page + 1024, fill(6, 2048), { fua: false });
  t.is(cache.stats.smallWritesAround, 1, 'a write of part of a page is cached');
  await cache.write(300 * page, fill(7, 2 * page), { fua: true });
  t.is(cache.stats.smallWritesAround, 2, 'another isolated write goes around, FUA passed down');
  t.is(cache.status().dirtyBytes, 19 * page);

  const expected = Buffer.alloc(302 * page);
  for (let index = 0; index < 32; index += 2) fill(1, page).copy(expected, index * page);
  fill(5, page).copy(expected, 2 * page);
  fill(3, page).copy(expected, 100 * page);
  fill(4, page).copy(expected, 101 * page);
  fill(6, 2048).copy(expected, 200 * page + 1024);
  fill(7, 2 * page).copy(expected, 300 * page);
  t.true((await readBack(cache, 0, expected.length)).equals(expected), 'reads return the newest bytes of every path');
  await cache.flush();
  await shutDown(s);
  t.true(legsIdentical(fixture.legPaths, cacheStackSizeBytes).identical);
  for (const leg of fixture.settings.legs) {
    t.true((await legContents(leg, cacheStackSizeBytes)).subarray(0, expected.length).equals(expected));
  }
});

test('a small write around and a cached rewrite of its page: the rewrite waits at the gate, lands after it, and the flush covers both', async (t) => {
  t.timeout(30_000);
  const s = await cacheOverMirror(t);
  const witness = new WriteWitness(s.mirror.device);
  const cache = new PageCache(witness, cacheOptions(busyAt));
  t.teardown(() => cache.close().catch(() => undefined));
  await makeBusy(cache);
  const releases = s.faults.map((fault) => fault.holdWrites());
  t.teardown(() => { for (const release of releases) release(); });
  const around = cache.write(100 * page, fill(2, page), { fua: false });
  await new Promise((resolve) => setTimeout(resolve, 20));
  t.deepEqual(witness.writesStarted, [[100 * page, page]], 'the first write went around and is held below');
  const rewrite = cache.write(100 * page, fill(3, page), { fua: false });
  const rewriteDone = settledYet(rewrite);
  await new Promise((resolve) => setTimeout(resolve, 20));
  t.false(rewriteDone(), 'the cached rewrite waits while the write around holds its page');
  for (const release of releases) release();
  await Promise.all([around, rewrite]);
  t.is(cache.stats.smallWritesAround, 1);
  t.true((await readBack(cache, 100 * page, page)).equals(fill(3, page)), 'the rewrite wins');
  await cache.flush();
  const started = witness.writesStarted.filter(([offset]) => offset === 100 * page);
  t.deepEqual(started, [[100 * page, page], [100 * page, page]], 'written around, then written back by the flush');
  await cache.close();
  await s.mirror.shutdown();
  for (const leg of s.fixture.settings.legs) {
    t.true((await legContents(leg, cacheStackSizeBytes)).subarray(100 * page, 101 * page).equals(fill(3, page)));
  }
  t.true(legsIdentical(s.fixture.legPaths, cacheStackSizeBytes).identical);
});

test('ENOSPC during a small write around: the write is cached and acknowledged instead, later small writes stay cached, and a flush succeeds once space is back', async (t) => {
  t.timeout(30_000);
  const s = await cacheOverMirror(t, { cache: busyAt });
  const { cache, faults, fixture } = s;
  await makeBusy(cache);
  for (const fault of faults) fault.addRule({ ops: ['write'], error: 'ENOSPC', rangeBytes: [100 * page, 101 * page] });
  await cache.write(100 * page, fill(2, page), { fua: false });
  t.is(cache.stats.smallWritesAround, 1, 'it went around first');
  t.is(cache.status().dirtyBytes, 17 * page, 'and was cached after the device below ran out of space');
  t.truthy(cache.status().noSpace, 'the cache reports it is out of space');
  await cache.write(300 * page, fill(3, page), { fua: false });
  t.is(cache.stats.smallWritesAround, 1, 'while out of space, small writes stay in the cache under the no-space policy');
  const failure = await t.throwsAsync(cache.flush());
  t.is((failure as { code?: string }).code, 'ENOSPC');
  t.true((await readBack(cache, 100 * page, page)).equals(fill(2, page)), 'reads return the acknowledged bytes');
  for (const fault of faults) fault.heal();
  await cache.flush();
  t.is(cache.status().noSpace, undefined);
  t.is(cache.status().dirtyBytes, 0);
  await shutDown(s);
  t.true(legsIdentical(fixture.legPaths, cacheStackSizeBytes).identical);
  for (const leg of fixture.settings.legs) {
    const data = await legContents(leg, cacheStackSizeBytes);
    t.true(data.subarray(100 * page, 101 * page).equals(fill(2, page)));
    t.true(data.subarray(300 * page, 301 * page).equals(fill(3, page)));
  }
});

test('a write around that the device below finishes in its turn is answered in that turn (finishedNow), its older pages dropped', async (t) => {
  const dir = makeTempDir('write-around-turn');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // A file leg writes into the kernel's page cache on the event loop: it answers finishedNow.
  const leg = await FileLeg.open({ path: path.join(dir, 'leg.img'), createSizeBytes: 1024 * KiB });
  const cache = new PageCache(leg, cacheOptions({ writeAroundBytes: aroundFrom }));
  t.teardown(() => cache.close().catch(() => undefined));
  await cache.write(4096, fill(1, 4096), { fua: false });
  t.is(cache.status().dirtyBytes, 4096);
  const around = cache.write(0, fill(2, 64 * KiB), { fua: false });
  t.is(around, finishedNow, 'no promise turn between the write landing below and its answer');
  t.is(cache.stats.writesAround, 1);
  t.is(cache.status().dirtyBytes, 0, 'the older dirty page inside the range was superseded in the same turn');
  t.true((await readBack(cache, 0, 64 * KiB)).equals(fill(2, 64 * KiB)));
  // A write the cache keeps (a partial page) still answers through a promise, after its copy into pages.
  const cached = cache.write(100 * KiB + 512, fill(3, 512), { fua: false });
  t.not(cached, finishedNow);
  await cached;
  t.is(cache.status().dirtyBytes, 4096);
  // A failure below is still the cache's to classify: a write past a leg that is closed fails as a value, not a throw.
  await cache.flush();
  await leg.close();
  await t.throwsAsync(cache.write(128 * KiB, fill(4, 64 * KiB), { fua: false }));
  t.is(cache.failed?.code, undefined, 'a shut device below is not a medium failure');
  // The failed write left its range: a cached whole-page write of it would otherwise wait at the gate for ever.
  await cache.write(128 * KiB, fill(5, 4096), { fua: false });
  t.is(cache.status().dirtyBytes, 4096);
});

test('while the client flushes after every write, small writes go around the quiet cache; when the flushes stop or follow many writes, they are cached again', async (t) => {
  t.timeout(30_000);
  const clock = new ManualClock(1000);
  const s = await cacheOverMirror(t, { cache: { writeAroundBytes: aroundFrom, clock } });
  const { cache } = s;
  const commit = async (page: number): Promise<void> => {
    await cache.write(page * 4096, fill(page + 1, 4096), { fua: false });
    await cache.flush();
    clock.advance(1);
  };
  // A database's commits: a page, a flush, a millisecond apart. The first three are cached, then flushed.
  for (let page = 0; page < 3; page += 1) await commit(page);
  t.is(cache.stats.smallWritesAround, 0, 'the quiet cache kept the first three');
  for (let page = 3; page < 6; page += 1) await commit(page);
  t.is(cache.stats.smallWritesAround, 3, 'then the writes went around: each flush would write them back at once');
  t.true((await readBack(cache, 0, 6 * 4096)).equals(Buffer.concat([1, 2, 3, 4, 5, 6].map((byte) => fill(byte, 4096)))));
  // No flush for longer than the gap: writes are cached again.
  clock.advance(100);
  await cache.write(10 * 4096, fill(10, 4096), { fua: false });
  t.is(cache.status().dirtyBytes, 4096, 'the flushes stopped: the write is cached');
  for (let page = 11; page < 15; page += 1) await commit(page);
  t.is(cache.stats.smallWritesAround, 4, 'commits again: the fourth goes around');
  // Many writes between two flushes: the client is not committing page by page, and the bypass ends there.
  for (let page = 32; page < 48; page += 1) await cache.write(page * 4096, fill(12, 4096), { fua: false });
  t.is(cache.stats.smallWritesAround, 20, 'until the next flush the writes still go around');
  await cache.flush();
  await cache.write(64 * 4096, fill(13, 4096), { fua: false });
  t.is(cache.stats.smallWritesAround, 20, 'that flush followed 16 writes: this one is cached');
  t.is(cache.status().dirtyBytes, 4096);
  await shutDown(s);
});
