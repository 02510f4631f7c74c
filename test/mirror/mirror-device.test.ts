import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import type { FaultPlan } from '../../faults/fault-device.js';
import { isBlockError } from '../../blockdev/errors.js';
import { finishedNow } from '../../blockdev/types.js';
import { RegionLog } from '../../regionlog/region-log.js';
import { legsIdentical, mirrorFixture, stopMirror as stop } from '../helpers/mirror-fixture.js';
import { waitUntil } from '../helpers/wait.js';

const regionSize = 64 * 1024;
const noFaults = (): FaultPlan => ({ rules: [] });

async function until(what: string, condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  if (!(await waitUntil(condition, timeoutMs, 10))) throw new Error(`timed out waiting for ${what}`);
}

function readLegFile(file: string, offset: number, length: number): Buffer {
  const buffer = Buffer.alloc(length);
  const fd = fs.openSync(file, 'r');
  fs.readSync(fd, buffer, 0, length, offset);
  fs.closeSync(fd);
  return buffer;
}

test('a write reaches both legs from one buffer, and its region bit is durable before any leg sees the data', async (t) => {
  const fixture = mirrorFixture({ faults: [noFaults(), noFaults()] });
  const controller = await fixture.open();
  const releases = controller.faults.map((fault) => fault!.holdWrites());
  const offset = 5 * regionSize + 512;
  const data = Buffer.alloc(8192, 0x3c);
  const writing = controller.device.write(offset, data, { fua: false });
  await until('the bit on disk', () => RegionLog.inspect(fixture.logPath).state.dirty[0] !== 0);
  t.deepEqual(RegionLog.inspect(fixture.logPath).state.dirty[0], 1 << 5);
  for (const leg of fixture.legPaths) t.true(readLegFile(leg, offset, data.length).every((byte) => byte === 0), 'no leg has the data yet');
  for (const release of releases) release();
  await writing;
  await controller.device.flush();
  for (const leg of fixture.legPaths) t.true(readLegFile(leg, offset, data.length).equals(data));
  await stop(controller);
  fixture.cleanup();
});

test('a write that waits for nothing finishes in the turn it was issued on inline file legs; one behind a log commit does not', async (t) => {
  const fixture = mirrorFixture();
  const controller = await fixture.open();
  const { device } = controller;
  const first = device.write(3 * regionSize, Buffer.alloc(4096, 1), { fua: false });
  t.not(first, finishedNow, 'the region bit must be made durable first');
  await first;
  // A leg sends writes to the thread pool for a while after a slow one (inline-write-gate.ts), which
  // a loaded machine can cause: then try again, a bounded number of times.
  let inTurn = 0;
  for (let attempt = 0; attempt < 20 && inTurn === 0; attempt += 1) {
    const data = Buffer.alloc(4096, 10 + attempt);
    const offset = 3 * regionSize + 4096 * (1 + attempt);
    const writing = device.write(offset, data, { fua: false });
    if (writing === finishedNow) {
      inTurn += 1;
      for (const leg of fixture.legPaths) t.true(readLegFile(leg, offset, data.length).equals(data), 'already in both legs');
    } else {
      await writing;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
  t.is(inTurn, 1, 'bit durable, nothing overlapping: no promise of its own');
  t.not(device.write(3 * regionSize, Buffer.alloc(4096, 3), { fua: true }), finishedNow, 'FUA waits for the disk');
  await device.flush();
  await stop(controller);
  fixture.cleanup();
});

test('the sweeper clears quiet regions only after a sync, and a write during the sync keeps its region dirty', async (t) => {
  const fixture = mirrorFixture();
  const controller = await fixture.open();
  const { device } = controller;
  await device.write(1 * regionSize, Buffer.alloc(4096, 1), { fua: false });
  await device.write(2 * regionSize, Buffer.alloc(4096, 2), { fua: false });
  t.deepEqual(device.log.dirtyRegions(), [1, 2]);
  const sweeping = device.sweep();
  // The sweep chose its candidates synchronously; this write lands while its sync runs.
  const racing = device.write(1 * regionSize + 4096, Buffer.alloc(4096, 3), { fua: false });
  const result = await sweeping;
  await racing;
  t.deepEqual(result, { candidates: 2, cleared: 1, synced: true });
  t.deepEqual(RegionLog.inspect(fixture.logPath).state.dirty[0], 1 << 1, 'region 1 keeps its bit on disk');
  const second = await device.sweep();
  t.deepEqual(second, { candidates: 1, cleared: 1, synced: true });
  t.is(RegionLog.inspect(fixture.logPath).state.dirty[0], 0);
  await stop(controller);
  fixture.cleanup();
});

test('a failed sync clears nothing; ENOSPC on a leg flush fails the flush and keeps the leg; once healed, the sweep clears', async (t) => {
  const fixture = mirrorFixture({ faults: [noFaults(), { rules: [{ ops: ['flush'], error: 'ENOSPC', armed: false, sticky: true }] }] });
  const controller = await fixture.open();
  const { device } = controller;
  await device.write(0, Buffer.alloc(4096, 9), { fua: false });
  controller.faults[1]!.trigger();
  t.deepEqual(await device.sweep(), { candidates: 1, cleared: 0, synced: false });
  t.is(RegionLog.inspect(fixture.logPath).state.dirty[0], 1);
  const error = await t.throwsAsync(device.flush());
  t.true(isBlockError(error) && error.code === 'ENOSPC');
  t.is(controller.status().legs[1].state, 'in_sync', 'a retryable failure does not fail the leg');
  controller.faults[1]!.heal();
  await device.flush();
  t.deepEqual(await device.sweep(), { candidates: 1, cleared: 1, synced: true });
  await stop(controller);
  fixture.cleanup();
});

test('a leg failing mid-workload: writes continue degraded, the failure is in the log, no bit is cleared, re-add resyncs only what changed', async (t) => {
  const fixture = mirrorFixture({ sizeBytes: 8 << 20, faults: [noFaults(), { rules: [{ ops: ['write', 'flush', 'read'], error: 'EIO', armed: false }] }] });
  let controller = await fixture.open();
  let { device } = controller;
  for (let region = 0; region < 128; region += 1) await device.write(region * regionSize, Buffer.alloc(4096, region), { fua: false });
  t.is((await device.sweep()).cleared, 128);
  controller.faults[1]!.trigger();
  const changed = [3, 50, 51, 99];
  for (const region of changed) await device.write(region * regionSize + 8192, Buffer.alloc(16384, 0xee), { fua: false });
  t.is(controller.status().health, 'degraded');
  t.is(controller.status().legs[1].state, 'faulty');
  t.is(RegionLog.inspect(fixture.logPath).state.legs[1].state, 'faulty', 'persisted');
  t.is((await device.sweep()).cleared, 0);
  await device.flush();
  // A restart keeps the leg out and the bits set.
  await stop(controller);
  controller = await fixture.open();
  device = controller.device;
  t.is(controller.status().legs[1].state, 'faulty');
  t.deepEqual(device.log.dirtyRegions(), changed);
  const message = await controller.reAdd(1);
  t.regex(message, /4 regions to resync/);
  // The log records the leg in sync (durably) before a new generation serves it: until then the
  // leg's state already reads in_sync while the health is still degraded, so wait for the health.
  await until('re-add to finish', () => controller.status().health === 'optimal');
  t.is(controller.status().legs[1].state, 'in_sync');
  t.is(controller.resync.progress.regionsTotal, changed.length, 'only the regions written while away');
  await stop(controller);
  t.true(legsIdentical(fixture.legPaths, fixture.settings.sizeBytes).identical);
  fixture.cleanup();
});

test('replace puts an empty leg in and rebuilds it fully online while writes continue', async (t) => {
  const fixture = mirrorFixture({ sizeBytes: 8 << 20 });
  const controller = await fixture.open();
  const { device } = controller;
  for (let region = 0; region < 128; region += 2) await device.write(region * regionSize, Buffer.alloc(regionSize, region + 1), { fua: false });
  const newLeg = path.join(fixture.dir, 'new-leg.img');
  await controller.replace(1, newLeg);
  let writes = 0;
  while (controller.status().legs[1].state !== 'in_sync' && writes < 2000) {
    await device.write((writes % 128) * regionSize + 4096, Buffer.alloc(4096, writes & 0xff), { fua: false });
    writes += 1;
  }
  await until('rebuild to finish', () => controller.status().legs[1].state === 'in_sync');
  await stop(controller);
  t.true(legsIdentical([fixture.legPaths[0], newLeg], fixture.settings.sizeBytes).identical);
  fixture.cleanup();
});

test('a leg that fails mid full rebuild and is re-added gets every region it had not been given yet, not only the set bits', async (t) => {
  const fixture = mirrorFixture({ sizeBytes: 8 << 20 });
  // Slow enough that the rebuild is still running when the leg fails.
  const controller = await fixture.open({ resyncBytesPerSecond: 2 << 20 });
  const { device } = controller;
  for (let region = 0; region < 128; region += 1) await device.write(region * regionSize, Buffer.alloc(regionSize, region + 1), { fua: false });
  await device.sweep();
  t.is(device.log.dirtyRegions().length, 0, 'every bit clear before the rebuild');
  await controller.replace(1, path.join(fixture.dir, 'new-leg.img'));
  await new Promise((resolve) => setTimeout(resolve, 600));
  const checkpoint = device.log.state.legs[1].rebuildCheckpointBytes;
  t.true(checkpoint < fixture.settings.sizeBytes, 'the rebuild had not finished');
  await controller.fail(1);
  t.true(device.log.dirtyRegions().length >= 128 - Math.floor(checkpoint / regionSize),
    'every region past the checkpoint is marked, durably, while the leg is away');
  controller.resync.setRate(0);
  await controller.reAdd(1);
  await until('re-add to finish', () => controller.status().health === 'optimal');
  await stop(controller);
  const same = legsIdentical([fixture.legPaths[0], path.join(fixture.dir, 'new-leg.img')], fixture.settings.sizeBytes);
  t.true(same.identical, `the legs differ at ${same.firstDifference}`);
  fixture.cleanup();
});

test('with no in-sync leg left every request fails with EIO, and the mirror stays failed', async (t) => {
  const fixture = mirrorFixture({ faults: [{ rules: [{ ops: ['write'], error: 'EIO' }] }, { rules: [{ ops: ['write'], error: 'EIO' }] }] });
  const controller = await fixture.open();
  const failure = await t.throwsAsync(controller.device.write(0, Buffer.alloc(4096), { fua: false }));
  t.true(isBlockError(failure) && failure.code === 'EIO');
  const read = await t.throwsAsync(controller.device.read(0, Buffer.alloc(4096)));
  t.regex(read!.message, /mirror has failed/);
  t.is(controller.status().health, 'failed');
  await controller.close();
  fixture.cleanup();
});

test('after a crash a region that may differ is read from the source leg until resynced', async (t) => {
  const fixture = mirrorFixture({ faults: [noFaults(), noFaults()] });
  let controller = await fixture.open();
  await controller.device.write(3 * regionSize, Buffer.alloc(regionSize, 0xaa), { fua: true });
  await stop(controller);
  // Leg 1 missed a write before a crash: different bytes, bit set, log unclean.
  const fd = fs.openSync(fixture.legPaths[1], 'r+');
  fs.writeSync(fd, Buffer.alloc(regionSize, 0xbb), 0, regionSize, 3 * regionSize);
  fs.closeSync(fd);
  const log = RegionLog.open(fixture.logPath);
  log.setDirty(3);
  log.state.cleanShutdown = false;
  await log.commit();
  await log.close();
  controller = await fixture.open({ legs: fixture.settings.legs.map((leg) => ({ ...leg, faults: { rules: [] } })) });
  // The copy to leg 1 is held, so the region stays out of sync while we read it many times.
  const release = controller.faults[1]!.holdWrites();
  const target = Buffer.alloc(4096);
  t.is(controller.device.regions.outOfSyncRegions, 1);
  for (let read = 0; read < 20; read += 1) {
    await controller.device.read(3 * regionSize + 4096 * (read % 16), target);
    t.true(target.every((byte) => byte === 0xaa));
  }
  t.is(controller.device.regions.outOfSyncRegions, 1, 'the reads ran while the region was out of sync');
  release();
  await controller.resync.idle();
  t.is(controller.device.regions.outOfSyncRegions, 0);
  await stop(controller);
  t.true(legsIdentical(fixture.legPaths, fixture.settings.sizeBytes).identical);
  fixture.cleanup();
});

test('concurrent overlapping writes reach every leg in the same order, so the legs never silently disagree', async (t) => {
  const fixture = mirrorFixture({ faults: [undefined, { rules: [] }] });
  t.teardown(() => fixture.cleanup());
  const controller = await fixture.open();
  const { device } = controller;
  // Leg 1 takes its first write slowly and later ones at once: given both, it applies them in reverse.
  const slowFirst = controller.faults[1]!;
  const write = slowFirst.write.bind(slowFirst);
  let writes = 0;
  slowFirst.write = async (offsetBytes, data, flags) => {
    writes += 1;
    if (writes === 1) await new Promise((resolve) => setTimeout(resolve, 50));
    return write(offsetBytes, data, flags);
  };
  const first = device.write(0, Buffer.alloc(8192, 1), { fua: false });
  const second = device.write(4096, Buffer.alloc(8192, 2), { fua: false });
  await Promise.all([first, second]);
  await stop(controller);
  t.deepEqual(legsIdentical(fixture.legPaths, 64 * 1024), { identical: true });
  const leg = fs.readFileSync(fixture.legPaths[1]).subarray(0, 12288);
  t.true(leg.subarray(4096).equals(Buffer.alloc(8192, 2)), 'the later write wins on the leg that was slow to take the first');
});

test('a sequential writer entering clean regions sets the next 16 MiB of bits in its commit; other writes set only their own; the sweeper clears both', async (t) => {
  const MiB = 1024 * 1024;
  const fixture = mirrorFixture({ sizeBytes: 64 * MiB, regionSizeBytes: MiB });
  const controller = await fixture.open();
  const { device } = controller;
  const bitsOnDisk = (): number[] => {
    const { state } = RegionLog.inspect(fixture.logPath);
    return Array.from({ length: 64 }, (_, region) => region).filter((region) => ((state.dirty[region >> 3] >> (region & 7)) & 1) === 1);
  };
  const before = device.log.commitsRun;
  for (let index = 0; index < 8; index += 1) await device.write(index * MiB, Buffer.alloc(MiB, index + 1), { fua: false });
  t.is(device.log.commitsRun - before, 2, 'the first write, then the one that continued it into region 1 and set the bits ahead');
  t.deepEqual(bitsOnDisk(), Array.from({ length: 18 }, (_, region) => region), 'regions 0-1 written, 2-17 set ahead');
  await device.write(40 * MiB + 4096, Buffer.alloc(4096, 9), { fua: false });
  t.is(bitsOnDisk().length, 19, 'a write that continues nothing sets its own region only');
  t.true(bitsOnDisk().includes(40));
  t.deepEqual(await device.sweep(), { candidates: 19, cleared: 19, synced: true });
  t.deepEqual(bitsOnDisk(), []);
  await stop(controller);
  t.true(legsIdentical(fixture.legPaths, 64 * MiB).identical);
  fixture.cleanup();
});

test('first writes to many clean regions at once share log commits (group commit), and every bit is on disk when they are acknowledged', async (t) => {
  const fixture = mirrorFixture();
  const controller = await fixture.open();
  const { device } = controller;
  const regions = 64;
  const before = device.log.commitsRun;
  const writes = Array.from({ length: regions }, (_, region) => device.write(region * regionSize, Buffer.alloc(4096, region + 1), { fua: false }));
  await Promise.all(writes);
  const commits = device.log.commitsRun - before;
  t.true(commits >= 1 && commits <= 3, `${regions} first writes to clean regions took ${commits} log commits`);
  const { state } = RegionLog.inspect(fixture.logPath);
  const onDisk = Array.from({ length: regions }, (_, region) => (state.dirty[region >> 3] >> (region & 7)) & 1);
  t.true(onDisk.every((bit) => bit === 1), 'every written region\'s bit is on disk once its write is acknowledged');
  t.log(`${regions} first writes, ${commits} log commits`);
  await stop(controller);
  fixture.cleanup();
});
