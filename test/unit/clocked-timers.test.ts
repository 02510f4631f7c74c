import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import test from 'ava';
import pino from 'pino';
import { FileLeg } from '../../backends/file-leg.js';
import { parseConfig } from '../../config/schema.js';
import { PageCache } from '../../pagecache/page-cache.js';
import { openStorageStack } from '../../stack/storage-stack.js';
import { ManualClock } from '../../sys/clock.js';
import { startLegServer } from '../helpers/leg-server.js';
import { makeTempDir } from '../helpers/tools.js';

// Timing logic under a clock the test moves: "after N ms this happens, not
// before" is checked exactly, and no test sleeps on the wall clock for it.

const MiB = 1024 * 1024;
const logger = pino({ level: 'silent' });

/** Lets the I/O a timer started finish (bounded: a few hundred turns of the event loop). */
async function settle(done: () => boolean): Promise<boolean> {
  for (let turn = 0; turn < 2000 && !done(); turn += 1) await new Promise((resolve) => setImmediate(resolve));
  return done();
}

test('the sweeper sweeps once per interval of its clock, never before, and stops when told', async (t) => {
  const dir = makeTempDir('clock-sweeper');
  const config = parseConfig({
    storage: { legs: [{ path: 'leg0.img' }, { path: 'leg1.img' }], log: 'mirror.log', sizeBytes: '8MiB', regionSize: '1MiB',
      sweepIntervalMs: 3000 },
    listen: { tcp: null, unix: 'unused.sock' },
    cache: { enabled: false },
  }, dir);
  const clock = new ManualClock();
  const stack = await openStorageStack(config, logger, { clock });
  try {
    const bitsSet = (): number => stack.mirror!.device.regions.counts().bitsSet;
    t.is(bitsSet(), 0);
    await stack.device.write(0, Buffer.alloc(4096, 1), { fua: false });
    t.is(bitsSet(), 1, 'a write leaves its region\'s bit set');
    clock.advance(2999);
    t.is(stack.sweeper.inProgress, undefined, 'no sweep before the interval');
    clock.advance(1);
    t.truthy(stack.sweeper.inProgress, 'the sweep starts at the interval');
    await stack.sweeper.inProgress;
    t.is(bitsSet(), 1, 'one sweep finds the region quiet once: not cleared yet');
    clock.advance(2999);
    t.is(stack.sweeper.inProgress, undefined);
    clock.advance(1);
    t.truthy(stack.sweeper.inProgress, 'the second sweep, one interval later');
    await stack.sweeper.inProgress;
    t.is(bitsSet(), 0, 'the second quiet sweep cleared the region\'s bit');
    stack.sweeper.setInterval(0);
    clock.advance(30_000);
    t.is(stack.sweeper.inProgress, undefined, 'an interval of 0 stops sweeping');
    t.is(clock.pending, 0, 'and leaves no timer behind');
  } finally {
    await stack.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the page cache writes back a dirty page once it is older than dirtyExpireMs by its clock, not before', async (t) => {
  const dir = makeTempDir('clock-cache');
  const clock = new ManualClock();
  const leg = await FileLeg.open({ path: path.join(dir, 'leg.img'), createSizeBytes: 4 * MiB });
  const cache = new PageCache(leg, { capacityBytes: 2 * MiB, dirtyLimitBytes: MiB, dirtyExpireMs: 5000, writebackIntervalMs: 1000,
    noSpacePolicy: 'error', noSpaceTimeoutMs: 0, logger, clock });
  try {
    await cache.write(0, Buffer.alloc(8192, 5), { fua: false });
    clock.advance(4999);
    await settle(() => false);
    t.is(cache.stats.writebacks, 0, 'younger than dirtyExpireMs: still only in the cache');
    t.is(cache.dirtyBytes, 8192);
    clock.advance(1001);
    t.true(await settle(() => cache.dirtyBytes === 0), 'expired: the next interval wrote it back');
    const onDisk = Buffer.alloc(8192);
    await leg.read(0, onDisk);
    t.true(onDisk.equals(Buffer.alloc(8192, 5)), 'the leg has the bytes');
  } finally {
    await cache.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a client that does not finish the handshake is dropped at the deadline of the server\'s clock, not before', async (t) => {
  const clock = new ManualClock();
  const harness = await startLegServer(t, { sizeBytes: MiB, connection: { clock, handshakeTimeoutMs: 120_000 } });
  const socket = typeof harness.address === 'number' ? net.connect(harness.address, '127.0.0.1') : net.connect(harness.address);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.on('error', () => {});
  await new Promise<void>((resolve) => socket.once('data', () => resolve()));
  clock.advance(119_999);
  const early = await Promise.race([closed.then(() => true), new Promise((resolve) => setTimeout(() => resolve(false), 50))]);
  t.false(early, 'still connected a millisecond before the deadline');
  clock.advance(1);
  await closed;
  t.pass('dropped at the deadline');
});
