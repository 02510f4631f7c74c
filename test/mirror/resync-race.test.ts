import fs from 'node:fs';
import test from 'ava';
import { RegionLog } from '../../regionlog/region-log.js';
import { legsIdentical, mirrorFixture } from '../helpers/mirror-fixture.js';

/**
 * The GlusterFS rebalance race: resync reads a region from the source and
 * writes it to the other leg; a client write to that region between the two
 * steps would be overwritten by the older bytes. Many seeded interleavings of
 * recovery resync and client rewrites of the regions being copied; after
 * each, both legs hold exactly the newest acknowledged bytes of every block.
 */
const regionSize = 64 * 1024;
const blockSize = 4096;
const regions = 8;
const sizeBytes = regions * regionSize;
const iterations = Number(process.env.RESYNC_RACE_ITERATIONS ?? 40);

function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 4294967296;
  };
}

test(`recovery resync never overwrites a racing client write (${iterations} seeded interleavings)`, async (t) => {
  for (let iteration = 0; iteration < iterations; iteration += 1) {
    const seed = 1000 + iteration;
    const next = random(seed);
    const fixture = mirrorFixture({ sizeBytes, regionSizeBytes: regionSize });
    let controller = await fixture.open();
    // Known contents, then a crash leaves leg 1 different in every region and every bit set.
    const expected = Buffer.alloc(sizeBytes);
    for (let offset = 0; offset < sizeBytes; offset += 1) expected[offset] = (offset * 7 + seed) & 0xff;
    await controller.device.write(0, expected, { fua: true });
    await controller.shutdown();
    await controller.close();
    fs.writeFileSync(fixture.legPaths[1], Buffer.alloc(sizeBytes, 0xee), { flag: 'r+' });
    const log = RegionLog.open(fixture.logPath);
    for (let region = 0; region < regions; region += 1) log.setDirty(region);
    log.state.cleanShutdown = false;
    await log.commit();
    await log.close();

    const latencyMs = Math.floor(next() * 3);
    controller = await fixture.open({
      resyncBytesPerSecond: 0,
      legs: fixture.settings.legs.map((leg, slot) => ({ ...leg, faults: { rules: [], latencyMs: slot === 1 ? latencyMs : 0 } })),
    });
    // Client rewrites of random blocks, each block's writes in sequence so the newest is well defined.
    const chains = new Map<number, Promise<void>>();
    const writes: Array<Promise<void>> = [];
    const count = 20 + Math.floor(next() * 40);
    for (let write = 0; write < count; write += 1) {
      const block = Math.floor(next() * (sizeBytes / blockSize));
      const value = Math.floor(next() * 256);
      const delayMs = Math.floor(next() * 6);
      const previous = chains.get(block) ?? Promise.resolve();
      const chained = previous.then(async () => {
        await new Promise((resolve) => setTimeout(resolve, delayMs));
        await controller.device.write(block * blockSize, Buffer.alloc(blockSize, value), { fua: false });
        expected.fill(value, block * blockSize, (block + 1) * blockSize);
      });
      chains.set(block, chained);
      writes.push(chained);
    }
    await Promise.all(writes);
    await controller.resync.idle();
    const stillOut = controller.device.regions.outOfSyncRegions;
    await controller.shutdown();
    await controller.close();
    t.is(stillOut, 0, `seed ${seed}: resync finished`);
    const leg0 = fs.readFileSync(fixture.legPaths[0]).subarray(0, sizeBytes);
    const leg1 = fs.readFileSync(fixture.legPaths[1]).subarray(0, sizeBytes);
    if (!leg0.equals(expected) || !leg1.equals(expected)) {
      t.fail(`seed ${seed}: a leg holds older data (leg0 ok: ${leg0.equals(expected)}, leg1 ok: ${leg1.equals(expected)})`);
    }
    t.true(legsIdentical(fixture.legPaths, sizeBytes).identical);
    fixture.cleanup();
  }
});
