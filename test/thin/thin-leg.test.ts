import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ThinLeg } from '../../backends/thin-leg.js';
import { blockBytes, geometryOf, mapPageOffset } from '../../backends/thin-format.js';
import { makeTempDir } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const chunk = 64 * 1024;

async function newPool(t: { teardown(fn: () => void): void }, poolBytes: number, virtualSizeBytes = 16 * MiB):
  Promise<{ file: string; leg: ThinLeg }> {
  const dir = makeTempDir('thin');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'pool.thin');
  ThinLeg.create(file, { virtualSizeBytes, poolBytes, chunkSizeBytes: chunk });
  return { file, leg: await ThinLeg.open({ path: file }) };
}

function pattern(seed: number, length: number): Buffer {
  const buffer = Buffer.alloc(length);
  for (let index = 0; index < length; index += 4) buffer.writeUInt32LE((seed * 2654435761 + index) >>> 0, index);
  return buffer;
}

test('unwritten chunks read as zeroes and report as holes; a partial write allocates one zero-filled chunk', async (t) => {
  const { leg } = await newPool(t, 4 * MiB);
  const empty = Buffer.alloc(256 * 1024, 0xff);
  await leg.read(0, empty);
  t.true(empty.equals(Buffer.alloc(empty.length)));
  await leg.write(chunk + 4096, pattern(1, 4096), { fua: false });
  const back = Buffer.alloc(chunk);
  await leg.read(chunk, back);
  t.true(back.subarray(4096, 8192).equals(pattern(1, 4096)));
  t.true(back.subarray(0, 4096).equals(Buffer.alloc(4096)), 'the rest of a new chunk reads as zeroes');
  t.is(leg.usage().usedBytes, chunk);
  t.deepEqual(await leg.blockStatus(0, 3 * chunk), [
    { offsetBytes: 0, lengthBytes: chunk, hole: true, zero: true },
    { offsetBytes: chunk, lengthBytes: chunk, hole: false, zero: false },
    { offsetBytes: 2 * chunk, lengthBytes: chunk, hole: true, zero: true },
  ]);
  await leg.close();
});

test('a full pool fails new chunks with a retryable ENOSPC, keeps serving written data, and grows online', async (t) => {
  const { leg } = await newPool(t, 4 * chunk);
  for (let index = 0; index < 4; index += 1) await leg.write(index * chunk, pattern(index, chunk), { fua: false });
  const error = await t.throwsAsync(leg.write(8 * chunk, pattern(9, 4096), { fua: false }));
  t.is((error as { code?: string }).code, 'ENOSPC');
  t.true((error as { retryable?: boolean }).retryable);
  t.regex(error!.message, /pool grow/);
  await leg.write(chunk, pattern(7, chunk), { fua: false });
  await leg.flush();
  const back = Buffer.alloc(chunk);
  await leg.read(chunk, back);
  t.true(back.equals(pattern(7, chunk)), 'overwriting an allocated chunk needs no space');
  // A grow while a write waits for nothing else: the next allocation sees it.
  const grown = await leg.grow({ toBytes: 8 * chunk });
  t.is(grown.capacityBytes, 8 * chunk);
  await leg.write(8 * chunk, pattern(9, 4096), { fua: true });
  await t.throwsAsync(leg.grow({ toBytes: 2 * chunk }), { message: /cannot shrink/ });
  await t.throwsAsync(leg.grow({ toBytes: 64 * MiB }), { message: /cannot exceed its virtual size/ });
  await leg.close();
});

test('trim of whole chunks returns them to the pool after a commit; partial trims zero in place', async (t) => {
  const { file, leg } = await newPool(t, 4 * chunk);
  for (let index = 0; index < 4; index += 1) await leg.write(index * chunk, pattern(index, chunk), { fua: false });
  await leg.trim(chunk - 4096, 2 * chunk + 8192, { fua: false });
  t.is(leg.usage().usedBytes, 2 * chunk, 'chunks 1 and 2 were freed; the partial chunks 0 and 3 stay');
  const back = Buffer.alloc(4 * chunk);
  await leg.read(0, back);
  t.true(back.subarray(0, chunk - 4096).equals(pattern(0, chunk).subarray(0, chunk - 4096)));
  t.true(back.subarray(chunk - 4096, 3 * chunk + 4096).equals(Buffer.alloc(2 * chunk + 8192)));
  t.true(back.subarray(3 * chunk + 4096).equals(pattern(3, chunk).subarray(4096)));
  await leg.write(10 * chunk, pattern(10, chunk), { fua: false });
  await leg.writeZeroes(2 * chunk, chunk, { fua: false, noHole: false, fast: true });
  t.is(leg.usage().usedBytes, 3 * chunk);
  await leg.flush();
  await leg.close();
  const reopened = await ThinLeg.open({ path: file });
  const again = Buffer.alloc(11 * chunk);
  await reopened.read(0, again);
  const expected = Buffer.alloc(11 * chunk);
  pattern(0, chunk).copy(expected, 0, 0, chunk - 4096);
  pattern(3, chunk).copy(expected, 3 * chunk + 4096, 4096);
  pattern(10, chunk).copy(expected, 10 * chunk);
  t.true(again.equals(expected), 'the map on disk says what the pool said before close');
  await reopened.close();
});

test('mappings not yet flushed vanish after a crash; flushed ones survive', async (t) => {
  const { file, leg } = await newPool(t, 16 * chunk);
  await leg.write(0, pattern(1, chunk), { fua: false });
  await leg.flush();
  await leg.write(2 * chunk, pattern(3, 4096), { fua: true });
  await leg.write(chunk, pattern(2, chunk), { fua: false });
  // No close, no flush: what a kill -9 leaves behind.
  const after = await ThinLeg.open({ path: file });
  const back = Buffer.alloc(3 * chunk);
  await after.read(0, back);
  t.true(back.subarray(0, chunk).equals(pattern(1, chunk)));
  t.true(back.subarray(chunk, 2 * chunk).equals(Buffer.alloc(chunk)), 'an unflushed new chunk is a hole again');
  t.true(back.subarray(2 * chunk, 2 * chunk + 4096).equals(pattern(3, 4096)), 'a FUA write committed its chunk');
  t.is(after.usage().usedBytes, 2 * chunk);
  await after.close();
  await leg.close();
});

test('a torn map page falls back to its older copy; both copies damaged is refused with a message', async (t) => {
  const { file, leg } = await newPool(t, 16 * chunk);
  await leg.write(0, pattern(1, chunk), { fua: true });
  await leg.write(chunk, pattern(2, chunk), { fua: true });
  await leg.close();
  // Sequence 3 (newest) sits in copy 1; tear it.
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, crypto.randomBytes(512), 0, 512, mapPageOffset(0, 1) + 100);
  fs.closeSync(fd);
  const fallback = await ThinLeg.open({ path: file });
  const back = Buffer.alloc(2 * chunk);
  await fallback.read(0, back);
  t.true(back.subarray(0, chunk).equals(pattern(1, chunk)), 'the older copy still maps chunk 0');
  t.true(back.subarray(chunk).equals(Buffer.alloc(chunk)), 'the torn commit is lost, not half-applied');
  await fallback.close();
  const fd2 = fs.openSync(file, 'r+');
  fs.writeSync(fd2, Buffer.alloc(blockBytes, 0x5a), 0, blockBytes, mapPageOffset(0, 0));
  fs.closeSync(fd2);
  const hash = (): string => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  const before = hash();
  await t.throwsAsync(ThinLeg.open({ path: file }), { message: /map page 0 is damaged in both copies/ });
  t.is(hash(), before, 'a refused pool is left as it was');
  const fd3 = fs.openSync(file, 'r+');
  fs.writeSync(fd3, Buffer.alloc(2 * blockBytes, 0x11), 0, 2 * blockBytes, 0);
  fs.closeSync(fd3);
  await t.throwsAsync(ThinLeg.open({ path: file }), { message: /not a usable thin pool/ });
});

test('a map that maps one physical chunk twice is refused', async (t) => {
  const { file, leg } = await newPool(t, 16 * chunk);
  await leg.write(0, pattern(1, chunk), { fua: true });
  await leg.close();
  const superblock = ThinLeg.inspect(file);
  if (typeof superblock === 'string') return t.fail(superblock);
  const geometry = geometryOf(superblock.virtualSizeBytes, superblock.chunkSizeBytes);
  t.true(geometry.mapPageCount >= 1);
  const { encodeMapPage } = await import('../../backends/thin-format.js');
  const entries = new Uint32Array(Math.min(geometry.chunkCount, 1008));
  entries[0] = 1;
  entries[5] = 1;
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, encodeMapPage(superblock.poolUuid, 0, 99n, entries), 0, blockBytes, mapPageOffset(0, 1));
  fs.closeSync(fd);
  await t.throwsAsync(ThinLeg.open({ path: file }), { message: /mapped by virtual chunks 0 and 5/ });
});

test('concurrent writes into one new chunk all land (one allocation, no zero-fill over a neighbour)', async (t) => {
  const { leg } = await newPool(t, 16 * chunk);
  const writes = [];
  for (let index = 0; index < 16; index += 1) writes.push(leg.write(index * 4096, pattern(index + 1, 4096), { fua: false }));
  await Promise.all(writes);
  t.is(leg.usage().usedBytes, chunk);
  const back = Buffer.alloc(chunk);
  await leg.read(0, back);
  for (let index = 0; index < 16; index += 1) t.true(back.subarray(index * 4096, (index + 1) * 4096).equals(pattern(index + 1, 4096)));
  await leg.close();
});

test('the low-water mark fires once when free space drops below it and again when it recovers', async (t) => {
  const dir = makeTempDir('thin');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'pool.thin');
  ThinLeg.create(file, { virtualSizeBytes: 16 * MiB, poolBytes: 8 * chunk, chunkSizeBytes: chunk });
  const events: boolean[] = [];
  const leg = await ThinLeg.open({ path: file, lowWaterBytes: 3 * chunk, onLowWater: (event) => events.push(event.below) });
  for (let index = 0; index < 6; index += 1) await leg.write(index * chunk, pattern(index, chunk), { fua: false });
  t.deepEqual(events, [true]);
  t.true(leg.usage().belowLowWater);
  await leg.grow({ byBytes: 8 * chunk });
  t.deepEqual(events, [true, false]);
  await leg.close();
});

test('write-zeroes with NO_HOLE allocates zeroed chunks (refused when FAST_ZERO is asked)', async (t) => {
  const { leg } = await newPool(t, 8 * chunk);
  await leg.write(0, pattern(1, chunk), { fua: false });
  await t.throwsAsync(leg.writeZeroes(0, 2 * chunk, { fua: false, noHole: true, fast: true }), { message: /ENOTSUP/ });
  await leg.writeZeroes(4096, 2 * chunk, { fua: true, noHole: true, fast: false });
  t.is(leg.usage().usedBytes, 3 * chunk, 'the range stays allocated');
  const back = Buffer.alloc(3 * chunk);
  await leg.read(0, back);
  t.true(back.subarray(0, 4096).equals(pattern(1, chunk).subarray(0, 4096)));
  t.true(back.subarray(4096, 4096 + 2 * chunk).equals(Buffer.alloc(2 * chunk)));
  t.deepEqual((await leg.blockStatus(0, 3 * chunk)).map((extent) => extent.hole), [false]);
  await leg.close();
});
