import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { copyBytesFor } from '../../regionlog/format.js';
import { RegionLog } from '../../regionlog/region-log.js';
import { createMirror } from '../../mirror/create.js';
import { labelAreaBytes } from '../../mirror/leg-label.js';
import { createdMirrorFixture, legsIdentical, type mirrorFixture, stopMirror } from '../helpers/mirror-fixture.js';
import { waitUntil } from '../helpers/wait.js';
import { makeTempDir } from '../helpers/tools.js';

const sha = (file: string): string => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');

test('a log update alternates copies; the newest valid copy wins; a torn newest copy falls back to the older', async (t) => {
  const dir = makeTempDir('log-');
  const file = path.join(dir, 'mirror.log');
  const log = await RegionLog.create(file, { deviceSizeBytes: 64 << 20, regionSizeBytes: 1 << 20, legUuids: [crypto.randomBytes(16), crypto.randomBytes(16)] });
  log.setDirty(3);
  await log.commit();
  t.true(log.isDurablyDirty(3));
  log.setDirty(7);
  await log.commit();
  await log.close();
  const { state, copies } = RegionLog.inspect(file);
  t.deepEqual(RegionLog.open(file).dirtyRegions(), [3, 7]);
  t.is(state.sequence, 3n);
  t.deepEqual(copies.map((copy) => copy.sequence), [2n, 3n]);
  // Tear the newest copy (sequence 3 lives in copy 1): the older copy, with only bit 3, wins.
  const copyBytes = copyBytesFor(64);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.alloc(512, 0x5a), 0, 512, copyBytes + 100);
  fs.closeSync(fd);
  const reopened = RegionLog.open(file);
  t.deepEqual(reopened.dirtyRegions(), [3]);
  t.is(reopened.state.sequence, 2n);
  await reopened.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a cleared bit stops counting as durable at once, before the clearing commit', async (t) => {
  const dir = makeTempDir('log-');
  const log = await RegionLog.create(path.join(dir, 'l'), { deviceSizeBytes: 1 << 20, regionSizeBytes: 4096, legUuids: [crypto.randomBytes(16)] });
  log.setDirty(1);
  await log.commit();
  log.clearDirty(1);
  t.false(log.isDurablyDirty(1));
  log.setDirty(1);
  t.false(log.isDurablyDirty(1), 'a write racing the clear must commit again');
  await log.commit();
  t.true(log.isDurablyDirty(1));
  await log.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function refusal(t: { regex: (value: string, pattern: RegExp) => void; fail: (message: string) => void },
  fixture: ReturnType<typeof mirrorFixture>, pattern: RegExp): Promise<void> {
  try {
    await stopMirror(await fixture.open());
    t.fail('the mirror was assembled');
  } catch (error) {
    t.regex((error as Error).message, pattern);
  }
}

function hashes(files: string[]): string[] {
  return files.map(sha);
}

test('a corrupted log (both copies) is refused and nothing is overwritten', async (t) => {
  const fixture = await createdMirrorFixture();
  const fd = fs.openSync(fixture.logPath, 'r+');
  const size = fs.fstatSync(fd).size;
  fs.writeSync(fd, Buffer.from('garbage!'), 0, 8, 20);
  fs.writeSync(fd, Buffer.from('garbage!'), 0, 8, size / 2 + 20);
  fs.closeSync(fd);
  const before = hashes([fixture.logPath, ...fixture.legPaths]);
  await refusal(t, fixture, /no valid copy: copy 0: checksum mismatch.*copy 1: checksum mismatch/);
  t.deepEqual(hashes([fixture.logPath, ...fixture.legPaths]), before);
  fixture.cleanup();
});

test('a truncated log is refused', async (t) => {
  const fixture = await createdMirrorFixture();
  fs.truncateSync(fixture.logPath, fs.statSync(fixture.logPath).size - 4096);
  const before = hashes([fixture.logPath, ...fixture.legPaths]);
  await refusal(t, fixture, /truncated or extended|truncated/);
  t.deepEqual(hashes([fixture.logPath, ...fixture.legPaths]), before);
  fixture.cleanup();
});

test('a log from another mirror is refused, naming both mirrors', async (t) => {
  const fixture = await createdMirrorFixture();
  const other = makeTempDir('other-');
  await createMirror({ logPath: path.join(other, 'mirror.log'), legs: [{ path: path.join(other, 'a') }, { path: path.join(other, 'b') }],
    sizeBytes: fixture.settings.sizeBytes, regionSizeBytes: fixture.settings.regionSizeBytes });
  fs.copyFileSync(path.join(other, 'mirror.log'), fixture.logPath);
  const before = hashes([fixture.logPath, ...fixture.legPaths]);
  await refusal(t, fixture, /leg 0 .* belongs to mirror [0-9a-f-]+, but the region log is for mirror [0-9a-f-]+/);
  t.deepEqual(hashes([fixture.logPath, ...fixture.legPaths]), before);
  fs.rmSync(other, { recursive: true, force: true });
  fixture.cleanup();
});

test('legs of different sizes are refused', async (t) => {
  const fixture = await createdMirrorFixture();
  // Grow leg 1 and move its label to the new end, as if it were a bigger disk with the same identity.
  const labels = Buffer.alloc(labelAreaBytes);
  const fd = fs.openSync(fixture.legPaths[1], 'r+');
  const size = fs.fstatSync(fd).size;
  fs.readSync(fd, labels, 0, labelAreaBytes, size - labelAreaBytes);
  fs.ftruncateSync(fd, size - labelAreaBytes - 4096);
  fs.writeSync(fd, labels, 0, labelAreaBytes, size - labelAreaBytes - 4096);
  fs.closeSync(fd);
  await refusal(t, fixture, /legs of different sizes/);
  fixture.cleanup();
});

test('a stale copy of a leg presented as in sync is refused, and taken in for a full rebuild only with force', async (t) => {
  const fixture = await createdMirrorFixture();
  const stale = path.join(fixture.dir, 'leg1-backup.img');
  fs.copyFileSync(fixture.legPaths[1], stale);
  let controller = await fixture.open();
  await controller.device.write(0, Buffer.alloc(65536, 7), { fua: true });
  await stopMirror(controller);
  fs.copyFileSync(stale, fixture.legPaths[1]);
  await refusal(t, fixture, /leg 1 .* is stale: its label says events \d+, the log expects \d+/);
  controller = await fixture.open({ force: true });
  await controller.resync.idle();
  await waitUntil(() => controller.status().legs[1].state === 'in_sync', 5000, 25);
  t.is(controller.status().legs[1].state, 'in_sync');
  await stopMirror(controller);
  t.true(legsIdentical(fixture.legPaths, fixture.settings.sizeBytes).identical);
  fixture.cleanup();
});

test('a region log older than its legs is refused with its own message, and nothing is overwritten', async (t) => {
  const fixture = await createdMirrorFixture();
  const oldLog = path.join(fixture.dir, 'mirror-backup.log');
  fs.copyFileSync(fixture.logPath, oldLog);
  const controller = await fixture.open();
  await controller.device.write(0, Buffer.alloc(65536, 7), { fua: true });
  await stopMirror(controller);
  fs.copyFileSync(oldLog, fixture.logPath);
  const before = hashes([fixture.logPath, ...fixture.legPaths]);
  await refusal(t, fixture, /leg 0 .* is newer than the region log: its label says events \d+, the log expects \d+\. Most likely another host took this leg over .*split brain.*Otherwise this log is an older copy.*Safe steps: .*Do not use --force for this: it would rebuild leg 0 fully from the other legs here, destroying every write made to it since/);
  t.deepEqual(hashes([fixture.logPath, ...fixture.legPaths]), before);
  fixture.cleanup();
});

test('an unlabelled file given as a leg is refused; a missing log with existing legs is refused', async (t) => {
  const fixture = await createdMirrorFixture();
  fs.writeFileSync(fixture.legPaths[0], Buffer.alloc(fixture.settings.sizeBytes + labelAreaBytes));
  await refusal(t, fixture, /leg 0 .* has no valid nbd-mirror label/);
  fs.rmSync(fixture.logPath);
  await refusal(t, fixture, /region log .* does not exist, but .* do; refusing to guess/);
  t.false(fs.existsSync(fixture.logPath), 'no new log was created over existing legs');
  fixture.cleanup();
});
