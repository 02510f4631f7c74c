import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { FileLeg } from '../../backends/file-leg.js';
import { FaultDevice } from '../../faults/fault-device.js';
import { PowerCutDevice, PowerCutRegistry } from '../../faults/power-cut-device.js';
import { isDurabilityMark } from '../../faults/write-log-format.js';
import { applyRecord, WriteLogDevice, WriteLogReader } from '../../faults/write-log-device.js';
import { PageCache } from '../../pagecache/page-cache.js';
import { silentLogger } from '../helpers/mirror-fixture.js';
import { makeTempDir } from '../helpers/tools.js';

const sizeBytes = 64 * 1024;

async function leg(dir: string, name: string): Promise<FileLeg> {
  return FileLeg.open({ path: path.join(dir, name), createSizeBytes: sizeBytes });
}

function fill(byte: number, length = 4096): Buffer {
  return Buffer.alloc(length, byte);
}

// Each test cuts only its own devices: the registry is passed in, not process-wide.
test('power cut: unflushed writes are dropped, flushed and FUA writes survive, torn cuts mix sectors', async (t) => {
  const dir = makeTempDir('powercut-');
  const registry = new PowerCutRegistry();
  const drop = new PowerCutDevice(await leg(dir, 'drop.img'), { name: 'drop', policy: 'drop', seed: 1, registry });
  const torn = new PowerCutDevice(await leg(dir, 'torn.img'), { name: 'torn', policy: 'torn', seed: 3, registry });
  for (const device of [drop, torn]) {
    await device.write(0, fill(1), { fua: false });
    await device.flush();
    await device.write(0, fill(2), { fua: false });
    await device.write(8192, fill(3), { fua: true });
    await device.write(16384, fill(4, 16384), { fua: false });
  }
  t.is(drop.volatileSectors, 8 + 32, 'the rewrite after the flush and the unflushed write are volatile; the FUA write is not');
  const reports = await registry.cutAll();
  t.deepEqual(reports.map((report) => report.name).sort(), ['drop', 'torn']);
  let pendingAfterCut = false;
  void drop.read(0, Buffer.alloc(512)).then(() => { pendingAfterCut = true; });
  const dropped = fs.readFileSync(path.join(dir, 'drop.img'));
  t.true(dropped.subarray(0, 4096).equals(fill(1)), 'flushed bytes came back');
  t.true(dropped.subarray(8192, 12288).equals(fill(3)), 'FUA write survived');
  t.true(dropped.subarray(16384, 32768).equals(Buffer.alloc(16384)), 'unflushed write dropped');
  const tornImage = fs.readFileSync(path.join(dir, 'torn.img'));
  const sectors = Array.from({ length: 32 }, (_, index) => tornImage[16384 + index * 512]);
  t.true(sectors.includes(0) && sectors.includes(4), `a torn cut keeps some sectors and drops others (${sectors.join('')})`);
  t.true(tornImage.subarray(8192, 12288).equals(fill(3)));
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.false(pendingAfterCut, 'nothing is answered once the power is cut');
  await Promise.all([drop.close(), torn.close()]);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a fault device that ignores durability acknowledges flushes and FUA that a power cut then undoes', async (t) => {
  const dir = makeTempDir('powercut-');
  const registry = new PowerCutRegistry();
  const cut = new PowerCutDevice(await leg(dir, 'liar.img'), { name: 'liar', policy: 'drop', seed: 1, registry });
  const liar = new FaultDevice(cut, { rules: [], ignoreDurability: true });
  await liar.write(0, fill(1), { fua: false });
  await liar.flush();
  await liar.write(8192, fill(2), { fua: true });
  t.is(liar.durabilityIgnored, 2);
  t.is(cut.volatileSectors, 16, 'neither the flushed write nor the FUA write reached durability below');
  await registry.cutAll();
  const image = fs.readFileSync(path.join(dir, 'liar.img'));
  t.true(image.subarray(0, 4096).equals(Buffer.alloc(4096)) && image.subarray(8192, 12288).equals(Buffer.alloc(4096)),
    'both acknowledged writes are gone');
  await liar.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('power cut: a flush covers only writes completed before it began; overlapping writes keep the first durable bytes', async (t) => {
  const dir = makeTempDir('powercut-');
  const registry = new PowerCutRegistry();
  const device = new PowerCutDevice(await leg(dir, 'leg.img'), { name: 'order', policy: 'drop', seed: 1, registry });
  await device.write(0, fill(7), { fua: false });
  await device.write(0, fill(8), { fua: false });
  await device.write(0, fill(9), { fua: false });
  const flushing = device.flush();
  await new Promise((resolve) => setImmediate(resolve));
  const during = device.write(4096, fill(5), { fua: false });
  await flushing;
  await during;
  t.is(device.volatileSectors, 8, 'the write issued during the flush waited for it and stays volatile');
  await device.write(0, fill(10), { fua: false });
  await registry.cutAll();
  const image = fs.readFileSync(path.join(dir, 'leg.img'));
  t.true(image.subarray(0, 4096).equals(fill(9)), 'the cut goes back to what the flush made durable, not to the first bytes ever');
  t.true(image.subarray(4096, 8192).equals(Buffer.alloc(4096)));
  await device.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('power cut: a torn cut never splits a sector of the configured size, and tears finer sectors', async (t) => {
  const dir = makeTempDir('powercut-');
  // A 1 KiB write at 1 KiB, like ext4's superblock, plus a 6 KiB write straddling two 4 KiB sectors.
  const runCut = async (sectorBytes: number, seed: number): Promise<Buffer> => {
    const name = `sector-${sectorBytes}-${seed}`;
    const registry = new PowerCutRegistry();
    const device = new PowerCutDevice(await leg(dir, `${name}.img`), { name, policy: 'torn', seed, sectorBytes, registry });
    await device.write(1024, fill(6, 1024), { fua: false });
    await device.write(10240, fill(7, 6144), { fua: false });
    t.is(device.volatileSectors, sectorBytes === 4096 ? 3 : 2 + 12);
    await registry.cutAll();
    await device.close();
    return fs.readFileSync(path.join(dir, `${name}.img`));
  };
  const wholeOrNothing = (bytes: Buffer, byte: number): boolean => bytes.equals(fill(byte, bytes.length)) || bytes.equals(Buffer.alloc(bytes.length));
  let tornAt512 = 0;
  for (let seed = 1; seed <= 12; seed += 1) {
    const coarse = await runCut(4096, seed);
    t.true(wholeOrNothing(coarse.subarray(1024, 2048), 6), `seed ${seed}: the 1 KiB write is kept or dropped whole`);
    t.true(wholeOrNothing(coarse.subarray(10240, 12288), 7) && wholeOrNothing(coarse.subarray(12288, 16384), 7),
      `seed ${seed}: each 4 KiB sector of the straddling write is kept or dropped whole`);
    const fine = await runCut(512, seed);
    if (!wholeOrNothing(fine.subarray(1024, 2048), 6)) tornAt512 += 1;
  }
  t.true(tornAt512 > 0, '512-byte sectors do tear a 1 KiB write for some seed');
  t.throws(() => new PowerCutDevice(undefined as never, { name: 'bad', policy: 'torn', seed: 1, sectorBytes: 3000, registry: new PowerCutRegistry() }), { message: /power of two/ });
  fs.rmSync(dir, { recursive: true, force: true });
});

test('write log: records completed changes in order and rebuilds the device at every flush and FUA mark', async (t) => {
  const dir = makeTempDir('writelog-');
  const logPath = path.join(dir, 'leg.wlog');
  const device = await WriteLogDevice.open(await leg(dir, 'leg.img'), logPath, 'leg0');
  await device.write(0, fill(1), { fua: false });
  await device.flush();
  await device.write(4096, fill(2), { fua: true });
  await device.trim(0, 4096, { fua: false });
  await device.writeZeroes(8192, 4096, { fua: false, noHole: false, fast: false });
  await device.write(12288, fill(3), { fua: false });
  await device.flush();
  await device.close();

  const reader = WriteLogReader.open(logPath);
  const kinds: string[] = [];
  const states: Buffer[] = [];
  const imagePath = path.join(dir, 'replay.img');
  const fd = reader.startImage(imagePath);
  for (const { record, data } of reader.records()) {
    kinds.push(`${record.kind}${record.fua ? '+fua' : ''}`);
    applyRecord(fd, record, data);
    if (isDurabilityMark(record)) states.push(fs.readFileSync(imagePath).subarray(0, 16384));
  }
  fs.closeSync(fd);
  t.deepEqual(kinds, ['write', 'flush', 'write+fua', 'trim', 'zeroes', 'write', 'flush']);
  t.is(states.length, 3);
  t.true(states[0].subarray(0, 4096).equals(fill(1)) && states[0].subarray(4096).equals(Buffer.alloc(12288)));
  t.true(states[1].subarray(4096, 8192).equals(fill(2)));
  t.true(states[2].subarray(0, 4096).equals(Buffer.alloc(4096)) && states[2].subarray(12288, 16384).equals(fill(3)));
  t.true(states[2].equals(fs.readFileSync(path.join(dir, 'leg.img')).subarray(0, 16384)), 'the last mark is the device as it is');
  reader.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('write log: a torn tail is cut off and appending resumes; a damaged header or record is refused or ends the log', async (t) => {
  const dir = makeTempDir('writelog-');
  const logPath = path.join(dir, 'leg.wlog');
  let device = await WriteLogDevice.open(await leg(dir, 'leg.img'), logPath, 'leg0');
  await device.write(0, fill(1), { fua: false });
  await device.flush();
  await device.close();
  const whole = fs.statSync(logPath).size;
  // A crash in the middle of appending: half a record.
  fs.appendFileSync(logPath, Buffer.alloc(30, 0x57));
  const torn = WriteLogReader.open(logPath);
  t.is(torn.scanEnd().stop, 'torn record header');
  torn.close();
  device = await WriteLogDevice.open(await leg(dir, 'leg.img'), logPath, 'leg0');
  t.is(fs.statSync(logPath).size, whole, 'reopening cut the torn tail off');
  await device.write(4096, fill(2), { fua: true });
  await device.close();
  const resumed = WriteLogReader.open(logPath);
  t.deepEqual([...resumed.records()].map((entry) => entry.record.sequence), [0, 1, 2]);
  resumed.close();

  // One flipped data byte ends the valid log at that record.
  const bytes = fs.readFileSync(logPath);
  bytes[4096 + 48 + 100] ^= 0xff;
  fs.writeFileSync(logPath, bytes);
  const damaged = WriteLogReader.open(logPath);
  t.is(damaged.scanEnd().stop, 'record checksum mismatch');
  t.is(damaged.scanEnd().nextSequence, 0);
  damaged.close();

  bytes[20] ^= 0xff;
  fs.writeFileSync(logPath, bytes);
  t.throws(() => WriteLogReader.open(logPath), { message: /checksum mismatch/ });
  fs.writeFileSync(logPath, Buffer.alloc(100));
  t.throws(() => WriteLogReader.open(logPath), { message: /truncated/ });
  fs.rmSync(dir, { recursive: true, force: true });
});

test('page cache: a FUA write whose pages a flush\'s writeback carried is durable before it is acknowledged', async (t) => {
  // Found by the CI sweep: the FUA write waited for the flush's (non-FUA) writeback of its page and was
  // acknowledged before anything made that writeback durable, so a power cut could take it back.
  const dir = makeTempDir('powercut-');
  const registry = new PowerCutRegistry();
  const powerCut = new PowerCutDevice(await leg(dir, 'leg.img'), { name: 'cache-fua', policy: 'drop', seed: 1, registry });
  const faults = new FaultDevice(powerCut);
  const cache = new PageCache(faults, { capacityBytes: 1 << 20, dirtyLimitBytes: 1 << 19, dirtyExpireMs: 60_000,
    writebackIntervalMs: 0, noSpacePolicy: 'error', noSpaceTimeoutMs: 0, logger: silentLogger });
  await cache.write(0, fill(1), { fua: false });
  const release = faults.holdWrites();
  // A trim of the page's tail holds writebacks of the page at the cache's gate...
  const trimming = cache.trim(3584, 512, { fua: false });
  const flushing = cache.flush();
  await new Promise((resolve) => setImmediate(resolve));
  // ...so the flush's writeback, queued first, takes the page with the FUA write's bytes in it.
  let acknowledged = false;
  const fuaWrite = cache.write(0, fill(2, 2048), { fua: true }).then(() => { acknowledged = true; });
  await new Promise((resolve) => setImmediate(resolve));
  release();
  await trimming;
  await fuaWrite;
  t.true(acknowledged);
  // Cut at once: a flush the cache started on its own behalf has not reached the disk yet.
  await registry.cutAll();
  const image = fs.readFileSync(path.join(dir, 'leg.img'));
  t.true(image.subarray(0, 2048).equals(fill(2, 2048)), 'the acknowledged FUA write survived the power cut');
  void flushing.catch(() => undefined);
  await powerCut.close();
  fs.rmSync(dir, { recursive: true, force: true });
});
