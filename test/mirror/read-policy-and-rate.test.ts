import crypto from 'node:crypto';
import fs from 'node:fs';
import test from 'ava';
import { noFlags } from '../../blockdev/types.js';
import type { MirrorController } from '../../mirror/controller.js';
import { type MirrorFixture, mirrorFixture, stopMirror } from '../helpers/mirror-fixture.js';
import { waitUntil } from '../helpers/wait.js';

const marked = 1024 * 1024;

/**
 * Which leg served a read, told by bytes the test put on each leg behind the
 * mirror's back in a region the log calls clean: leg 0 holds 0xa0 there, leg 1 0xb1.
 */
async function servedBy(controller: MirrorController): Promise<number> {
  const target = Buffer.alloc(4096);
  await controller.device.read(marked, target);
  if (target.every((byte) => byte === 0xa0)) return 0;
  if (target.every((byte) => byte === 0xb1)) return 1;
  throw new Error(`read neither leg's marker: ${target.subarray(0, 8).toString('hex')}`);
}

/** A created, stopped mirror whose legs hold each its own marker at `marked` (see servedBy). */
async function markedFixture(): Promise<MirrorFixture> {
  const fixture = mirrorFixture();
  await stopMirror(await fixture.open());
  fixture.legPaths.forEach((legPath, slot) => {
    const fd = fs.openSync(legPath, 'r+');
    fs.writeSync(fd, Buffer.alloc(4096, slot === 0 ? 0xa0 : 0xb1), 0, 4096, marked);
    fs.closeSync(fd);
  });
  return fixture;
}

test('read policies: round-robin alternates, least-pending spreads concurrent reads, preferred keeps to its leg; a region that may differ is read from the source leg even when another is preferred', async (t) => {
  const fixture = await markedFixture();

  const roundRobin = await fixture.open({ readPolicy: 'round-robin' });
  const turns: number[] = [];
  for (let read = 0; read < 4; read += 1) turns.push(await servedBy(roundRobin));
  t.true(turns.every((slot, index) => index === 0 || slot !== turns[index - 1]), `round-robin alternates: ${turns}`);
  await stopMirror(roundRobin);

  const leastPending = await fixture.open({ readPolicy: 'least-pending' });
  const together = await Promise.all([servedBy(leastPending), servedBy(leastPending)]);
  t.deepEqual([...together].sort(), [0, 1], `two reads in flight at once go to different legs: ${together}`);
  await stopMirror(leastPending);

  for (const preferredLeg of [0, 1]) {
    const preferred = await fixture.open({ readPolicy: 'preferred', preferredLeg });
    const slots: number[] = [];
    for (let read = 0; read < 4; read += 1) slots.push(await servedBy(preferred));
    t.deepEqual(slots, [preferredLeg, preferredLeg, preferredLeg, preferredLeg], `preferred leg ${preferredLeg}`);
    if (preferredLeg === 1) {
      // Out of sync: the legs may differ, so every read goes to the source leg until resync copies it
      // (which makes leg 1 hold leg 0's marker too, so this comes last).
      preferred.device.regions.markOutOfSync(preferred.device.regions.regionOf(marked));
      t.is(await servedBy(preferred), 0, 'the source leg, not the preferred one');
      t.is(await servedBy(preferred), 0);
      t.true(fs.readFileSync(fixture.legPaths[1]).subarray(marked, marked + 4096).every((byte) => byte === 0xb1),
        'leg 1 still held its own bytes while those reads ran');
    }
    await stopMirror(preferred);
  }
  fixture.cleanup();
});

test('write-mostly: a leg marked so serves no read while another in-sync leg can, is never the source, and serves reads once it is the only one', async (t) => {
  const fixture = await markedFixture();
  // Leg 0 is the write-mostly one here, so it would otherwise be the source (the first in-sync leg).
  const controller = await fixture.open({ readPolicy: 'round-robin',
    legs: fixture.settings.legs.map((leg, slot) => ({ ...leg, writeMostly: slot === 0 })) });
  const slots: number[] = [];
  for (let read = 0; read < 6; read += 1) slots.push(await servedBy(controller));
  t.deepEqual(slots, [1, 1, 1, 1, 1, 1], 'round-robin skips the write-mostly leg');
  t.is(controller.device.generation.source?.slot, 1, 'the source for regions that may differ is the other leg');
  await controller.fail(1);
  t.is(await servedBy(controller), 0, 'with no other in-sync leg, the write-mostly leg serves reads');
  await stopMirror(controller);
  fixture.cleanup();
});

test('resync keeps to storage.resyncRate: copying N bytes at R bytes per second takes about N/R', async (t) => {
  const fixture = mirrorFixture({ sizeBytes: 16 * 1024 * 1024, regionSizeBytes: 256 * 1024 });
  const bytesPerSecond = 4 * 1024 * 1024;
  const controller = await fixture.open({ resyncBytesPerSecond: bytesPerSecond });
  await controller.device.write(0, crypto.randomBytes(6 * 1024 * 1024), noFlags);
  controller.fullResync();
  t.true(await waitUntil(() => controller.status().resync.running, 5000, 5), 'the resync started');
  t.true(await waitUntil(() => !controller.status().resync.running, 20_000, 20), 'and finished');
  const { bytesCopied, startedAtMs, finishedAtMs } = controller.status().resync;
  t.true(bytesCopied >= 6 * 1024 * 1024, `copied ${bytesCopied}`);
  // The first 1 MiB chunk goes at once; from then on the copy waits to stay at the rate.
  const floorMs = ((bytesCopied - 1024 * 1024) / bytesPerSecond) * 1000;
  const tookMs = finishedAtMs - startedAtMs;
  t.true(tookMs >= floorMs - 50, `${bytesCopied} bytes at ${bytesPerSecond} B/s took ${tookMs} ms, under the ${Math.round(floorMs)} ms the rate allows`);
  t.log(`resync of ${bytesCopied} bytes at 4 MiB/s took ${tookMs} ms (floor ${Math.round(floorMs)} ms)`);
  await stopMirror(controller);
  fixture.cleanup();
});
