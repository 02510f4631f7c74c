import test from 'ava';
import { serverStatus } from '../../observe/status-view.js';
import { sweepTopDown } from '../../stack/top-down.js';
import { cacheOverMirror as stack, fill, readBack, shutDown } from '../helpers/cache-stack.js';
import { legContents } from '../helpers/mirror-fixture.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const sizeBytes = 16 * MiB;

for (const variant of ['a leg whose writes fail with ENOSPC', 'a thin pool that fills up'] as const) {
  test(`the QEMU sequence on ${variant}: A, flush, B, writeback ENOSPC, memory pressure, reads B, grow, flush, B durable`, async (t) => {
    const thin = variant === 'a thin pool that fills up';
    const chunk = 64 * KiB;
    const s = await stack(t, thin ? { thin: [{ poolBytes: 4 * chunk, chunkSizeBytes: chunk, lowWaterBytes: chunk }, undefined] } : {});
    const { cache, mirror, faults, fixture } = s;
    const offset = 2 * chunk;
    const length = 3 * chunk;
    await cache.write(offset, fill(0xaa, length), { fua: false });
    await cache.flush();
    if (thin) {
      // Another client fills the rest of the pool, so B's writeback needs space that is not there.
      await cache.write(8 * chunk, fill(0x11, chunk), { fua: true });
    } else {
      for (const fault of faults) fault.addRule({ ops: ['write'], error: 'ENOSPC' });
    }
    await cache.write(offset, fill(0xbb, length + chunk), { fua: false });
    const failure = await t.throwsAsync(cache.flush());
    t.is((failure as { code?: string }).code, 'ENOSPC', 'the flush reports the writeback failure, and not as EIO');
    t.true(cache.status().dirtyBytes > 0, 'nothing dirty was dropped');
    t.regex(cache.status().noSpace ?? '', /ENOSPC/);
    cache.shrink();
    t.true((await readBack(cache, offset, length + chunk)).equals(fill(0xbb, length + chunk)), 'reads return B, never A');
    t.is(mirror.status().health === 'failed', false, 'a retryable failure does not fail the mirror');
    if (thin) await mirror.growPool(0, { byBytes: 8 * chunk });
    else for (const fault of faults) fault.heal();
    await cache.flush();
    t.is(cache.status().dirtyBytes, 0);
    t.is(cache.status().noSpace, undefined);
    await shutDown(s);
    for (const leg of fixture.settings.legs) {
      const data = await legContents(leg, sizeBytes);
      t.true(data.subarray(offset, offset + length + chunk).equals(fill(0xbb, length + chunk)), `B is durable on ${leg.path}`);
    }
  });
}

test('a page changed while its writeback is in flight stays dirty and is written again (stable snapshots)', async (t) => {
  const s = await stack(t);
  const { cache, faults, fixture } = s;
  await cache.write(0, fill(1, 4096), { fua: false });
  const releases = faults.map((fault) => fault.holdWrites());
  const flushing = cache.flush();
  await new Promise((resolve) => setTimeout(resolve, 50));
  await cache.write(0, fill(2, 4096), { fua: false });
  for (const release of releases) release();
  await flushing;
  t.is(cache.status().dirtyBytes, 4096, 'the second version was not covered by the first writeback');
  await cache.flush();
  t.is(cache.status().dirtyBytes, 0);
  await shutDown(s);
  for (const leg of fixture.settings.legs) {
    t.true((await legContents(leg, sizeBytes)).subarray(0, 4096).equals(fill(2, 4096)), 'both legs hold the newest bytes');
  }
});

test('a FUA write is on every leg before it is acknowledged', async (t) => {
  const s = await stack(t);
  await s.cache.write(4096, fill(7, 8192), { fua: true });
  t.is(s.cache.status().dirtyBytes, 0);
  await s.mirror.device.flush();
  for (const leg of s.fixture.settings.legs) {
    t.true((await legContents(leg, sizeBytes)).subarray(4096, 12288).equals(fill(7, 8192)));
  }
  await shutDown(s);
});

test('partial-page writes merge with the bytes below (read-modify-write)', async (t) => {
  const s = await stack(t);
  await s.mirror.device.write(0, fill(3, 8192), { fua: false });
  await s.cache.write(512, fill(4, 1024), { fua: false });
  const expected = fill(3, 8192);
  fill(4, 1024).copy(expected, 512);
  t.true((await readBack(s.cache, 0, 8192)).equals(expected));
  await s.cache.flush();
  t.true((await readBack(s.mirror.device, 0, 8192)).equals(expected));
  await shutDown(s);
});

test('writers are throttled at the dirty limit while writeback progresses, never refused', async (t) => {
  const s = await stack(t, { cache: { dirtyLimitBytes: 256 * KiB, capacityBytes: 512 * KiB } });
  for (const fault of s.faults) fault.addRule({ ops: ['read'], error: 'EIO', armed: false });
  let peak = 0;
  for (let index = 0; index < 64; index += 1) {
    await s.cache.write(index * 64 * KiB, fill(index + 1, 64 * KiB), { fua: false });
    peak = Math.max(peak, s.cache.status().dirtyBytes);
  }
  t.true(peak <= 256 * KiB, `dirty peaked at ${peak}`);
  t.true(s.cache.status().stats.throttledWrites > 0);
  t.true(s.cache.status().cachedBytes <= 512 * KiB, 'clean pages are evicted under the memory cap');
  for (let index = 0; index < 64; index += 1) {
    t.true((await readBack(s.cache, index * 64 * KiB, 64 * KiB)).equals(fill(index + 1, 64 * KiB)));
  }
  await shutDown(s);
});

test('at the dirty limit with writeback failing, policy "error" refuses new writes with ENOSPC and never applies them', async (t) => {
  const s = await stack(t, { cache: { dirtyLimitBytes: 64 * KiB, capacityBytes: 1 * MiB } });
  for (const fault of s.faults) fault.addRule({ ops: ['write'], error: 'ENOSPC' });
  await s.cache.write(0, fill(1, 64 * KiB), { fua: false });
  await t.throwsAsync(s.cache.flush(), { message: /ENOSPC/ });
  const refused = await t.throwsAsync(s.cache.write(MiB, fill(2, 4096), { fua: false }));
  t.is((refused as { code?: string }).code, 'ENOSPC');
  t.regex(refused!.message, /dirty limit/);
  t.true((await readBack(s.cache, MiB, 4096)).equals(Buffer.alloc(4096)), 'the refused write left nothing behind');
  await s.cache.write(0, fill(3, 4096), { fua: false });
  t.pass('overwriting a page that is already dirty needs no room');
  t.is(s.cache.status().dirtyBytes, 64 * KiB);
  for (const fault of s.faults) fault.heal();
  await s.cache.flush();
  await shutDown(s);
});

test('policy "queue" holds writers up to the timeout, then ENOSPC; space arriving in time lets them through', async (t) => {
  const s = await stack(t, { cache: { dirtyLimitBytes: 64 * KiB, capacityBytes: 1 * MiB, noSpacePolicy: 'queue', noSpaceTimeoutMs: 400,
    writebackIntervalMs: 50 } });
  for (const fault of s.faults) fault.addRule({ ops: ['write'], error: 'ENOSPC' });
  await s.cache.write(0, fill(1, 64 * KiB), { fua: false });
  await t.throwsAsync(s.cache.flush());
  const started = Date.now();
  await t.throwsAsync(s.cache.write(MiB, fill(2, 4096), { fua: false }), { message: /ENOSPC/ });
  t.true(Date.now() - started >= 350, `waited ${Date.now() - started} ms before refusing`);
  const waiting = s.cache.write(MiB, fill(2, 4096), { fua: false });
  setTimeout(() => { for (const fault of s.faults) fault.heal(); }, 100);
  await waiting;
  t.true((await readBack(s.cache, MiB, 4096)).equals(fill(2, 4096)));
  await s.cache.flush();
  await shutDown(s);
});

test('a fatal failure (no in-sync leg left) fails the device: EIO on every request, shown in status', async (t) => {
  const s = await stack(t);
  await s.cache.write(0, fill(1, 4096), { fua: false });
  for (const fault of s.faults) fault.addRule({ ops: ['write', 'flush', 'read'], error: 'EIO' });
  const failure = await t.throwsAsync(s.cache.flush());
  t.is((failure as { code?: string }).code, 'EIO');
  await t.throwsAsync(s.cache.read(0, Buffer.alloc(4096)), { message: /operator must act/ });
  await t.throwsAsync(s.cache.flush(), { message: /EIO/ });
  for (const fault of s.faults) fault.heal();
  await t.throwsAsync(s.cache.flush(), { message: /EIO/ }, 'healing the legs does not make the lost writeback succeed');
  const status = serverStatus({ mirror: s.mirror, cache: s.cache });
  t.is(status.health, 'failed');
  t.truthy(status.cache?.failed);
  await s.mirror.shutdown();
  await s.cache.close();
});

test('trim drops cached pages; block status shows dirty pages as data over a thin hole', async (t) => {
  const chunk = 64 * KiB;
  const s = await stack(t, { thin: [{ poolBytes: 4 * MiB, chunkSizeBytes: chunk, lowWaterBytes: 0 }, { poolBytes: 4 * MiB, chunkSizeBytes: chunk, lowWaterBytes: 0 }] });
  await s.cache.write(chunk, fill(5, 4096), { fua: false });
  const extents = await s.cache.blockStatus(0, 2 * chunk);
  t.deepEqual(extents.map((extent) => [extent.offsetBytes, extent.lengthBytes, extent.hole]),
    [[0, chunk, true], [chunk, 4096, false], [chunk + 4096, chunk - 4096, true]]);
  await s.cache.flush();
  await s.cache.write(chunk, fill(6, 4096), { fua: false });
  await s.cache.trim(chunk, chunk, { fua: false });
  t.is(s.cache.status().dirtyBytes, 0, 'the dirty page inside the trimmed range was superseded');
  t.true((await readBack(s.cache, chunk, 4096)).equals(Buffer.alloc(4096)));
  await s.cache.flush();
  t.true((await readBack(s.mirror.device, chunk, 4096)).equals(Buffer.alloc(4096)));
  t.is(s.mirror.pools[0]?.usage().usedBytes, 0, 'the trimmed chunk went back to the pool');
  await shutDown(s);
});

test('the sweeper writes the cache back before its sync; a failing writeback clears no bit', async (t) => {
  const s = await stack(t);
  await s.cache.write(0, fill(1, 4096), { fua: false });
  await s.cache.writeBackAll();
  t.true(s.mirror.device.log.isDirty(0));
  await s.cache.write(MiB, fill(2, 4096), { fua: false });
  for (const fault of s.faults) fault.addRule({ ops: ['write'], error: 'ENOSPC' });
  const sweep = (): ReturnType<typeof sweepTopDown> => sweepTopDown({ mirror: s.mirror, cache: s.cache }, { ignoreQuietPasses: true });
  const failed = await sweep();
  t.is(failed.cleared, 0, 'the sync failed (ENOSPC in writeback): nothing cleared');
  t.true(s.mirror.device.log.isDirty(0));
  for (const fault of s.faults) fault.heal();
  const swept = await sweep();
  t.true(swept.synced);
  t.is(s.cache.status().dirtyBytes, 0, 'the sweep wrote the cache back');
  await sweep();
  t.false(s.mirror.device.log.isDirty(0));
  await shutDown(s);
});

test('pool grow online while writers queue for space and reads are in flight: every request completes, nothing is lost', async (t) => {
  const chunk = 64 * KiB;
  const thin = { poolBytes: 16 * chunk, chunkSizeBytes: chunk, lowWaterBytes: 0 };
  const s = await stack(t, { thin: [thin, thin], cache: { dirtyLimitBytes: 2 * MiB, capacityBytes: 4 * MiB, noSpacePolicy: 'queue',
    noSpaceTimeoutMs: 10_000, writebackIntervalMs: 50 } });
  const writes: Array<Promise<void>> = [];
  for (let index = 0; index < 64; index += 1) writes.push(s.cache.write(index * chunk, fill(index + 1, chunk), { fua: false }));
  const settledEarly = await Promise.race([Promise.all(writes).then(() => true), new Promise((resolve) => setTimeout(() => resolve(false), 500))]);
  t.true(s.cache.status().dirtyBytes <= 2 * MiB, 'concurrent writers cannot overshoot the dirty limit together');
  t.false(settledEarly, 'with the pool full, the last writers wait for space');
  t.truthy(s.cache.status().noSpace);
  const reads = Array.from({ length: 8 }, (_, index) => readBack(s.cache, index * chunk, chunk));
  await Promise.all([s.mirror.growPool(0, { toBytes: 128 * chunk }), s.mirror.growPool(1, { toBytes: 128 * chunk })]);
  await Promise.all(writes);
  for (const [index, read] of (await Promise.all(reads)).entries()) t.true(read.equals(fill(index + 1, chunk)));
  await s.cache.flush();
  await shutDown(s);
  for (const leg of s.fixture.settings.legs) {
    const data = await legContents(leg, sizeBytes);
    for (let index = 0; index < 64; index += 1) t.true(data.subarray(index * chunk, (index + 1) * chunk).equals(fill(index + 1, chunk)));
  }
});
