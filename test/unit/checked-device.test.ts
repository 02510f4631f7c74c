import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import pino from 'pino';
import { FileLeg } from '../../backends/file-leg.js';
import { assertExtentsTile, CheckedDevice } from '../../blockdev/checked-device.js';
import type { BlockDevice, Extent } from '../../blockdev/types.js';
import { parseConfig } from '../../config/schema.js';
import { openStorageStack } from '../../stack/storage-stack.js';
import { makeTempDir } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const logger = pino({ level: 'silent' });

test('the checked entry refuses bad ranges, flags and writes to a read-only device as values, before the layer sees them', async (t) => {
  const dir = makeTempDir('checked');
  const file = path.join(dir, 'leg.img');
  const leg = await FileLeg.open({ path: file, createSizeBytes: MiB });
  const device = CheckedDevice.wrap(leg, 'leg');
  const sizeBefore = fs.statSync(file).size;
  try {
    t.is(CheckedDevice.wrap(device, 'again'), device, 'wrapping twice adds no second check');
    const refusals: Array<[string, () => Promise<unknown>, string]> = [
      ['write past the end', () => device.write(MiB - 512, Buffer.alloc(4096), { fua: false }), 'EINVAL'],
      ['read at a negative offset', () => device.read(-4096, Buffer.alloc(4096)), 'EINVAL'],
      ['read at a fractional offset', () => device.read(0.5, Buffer.alloc(4096)), 'EINVAL'],
      ['trim past the end', () => device.trim(0, MiB + 1, { fua: false }), 'EINVAL'],
      ['zeroes with a non-boolean flag', () => device.writeZeroes(0, 4096, { fua: false, noHole: 1 as unknown as boolean, fast: false }), 'EINVAL'],
      ['write without flags', () => device.write(0, Buffer.alloc(4096), undefined as never), 'EINVAL'],
      ['write of a string', () => device.write(0, 'abc' as unknown as Buffer, { fua: false }), 'EINVAL'],
      ['block status past the end', () => device.blockStatus(MiB, 1), 'EINVAL'],
    ];
    for (const [what, call, code] of refusals) {
      let result: Promise<unknown> | undefined;
      t.notThrows(() => { result = call(); }, `${what}: rejects, never throws`);
      await t.throwsAsync(result!, { code }, what);
    }
    t.is(fs.statSync(file).size, sizeBefore, 'nothing extended the file');
    await device.write(MiB - 4096, Buffer.alloc(4096, 7), { fua: false });
    t.true(Buffer.alloc(4096, 7).equals(await readBack(device, MiB - 4096)), 'the last block is writable');
  } finally {
    await device.close();
  }
  const readOnly = CheckedDevice.wrap(await FileLeg.open({ path: file, readOnly: true }), 'read-only leg');
  try {
    await t.throwsAsync(readOnly.write(0, Buffer.alloc(4096), { fua: false }), { code: 'EROFS' });
    await t.throwsAsync(readOnly.trim(0, 4096, { fua: false }), { code: 'EROFS' });
  } finally {
    await readOnly.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an extent list that does not tile the asked range is a lower layer\'s bug, asserted where it leaves the stack', async (t) => {
  const lying = (extents: Extent[]): BlockDevice => ({
    sizeBytes: MiB, blockSizeBytes: 4096,
    capabilities: { readOnly: false, flush: true, fua: true, trim: true, writeZeroes: true, fastZero: false, blockStatus: true,
      multiConn: true, rotational: false },
    read: async () => {}, write: async () => {}, flush: async () => {}, trim: async () => {}, writeZeroes: async () => {},
    blockStatus: async () => extents, close: async () => {},
  });
  const extent = (offsetBytes: number, lengthBytes: number): Extent => ({ offsetBytes, lengthBytes, hole: false, zero: false });
  const honest = CheckedDevice.wrap(lying([extent(0, 4096), extent(4096, 8192)]), 'honest');
  const answer = await honest.blockStatus(0, 12288);
  t.notThrows(() => assertExtentsTile(answer, 0, 12288, MiB));
  const cases: Array<[string, Extent[]]> = [
    ['none', []],
    ['a gap', [extent(0, 4096), extent(8192, 4096)]],
    ['the wrong start', [extent(4096, 4096)]],
    ['an empty extent', [extent(0, 0)]],
    ['past the end', [extent(0, 2 * MiB)]],
  ];
  for (const [what, extents] of cases) {
    const device = lying(extents);
    t.throws(() => assertExtentsTile(extents, 0, 4096, device.sizeBytes), { name: 'AssertionError' }, what);
  }
});

test('the composed stack puts a checked entry in front of every layer: cache, mirror, each leg', async (t) => {
  const dir = makeTempDir('checked-stack');
  const config = parseConfig({
    storage: { legs: [{ path: 'leg0.img' }, { path: 'leg1.img' }], log: 'mirror.log', sizeBytes: '8MiB', regionSize: '1MiB' },
    listen: { tcp: null, unix: 'unused.sock' },
    cache: { enabled: true, size: '16MiB', dirtyLimit: '4MiB' },
  }, dir);
  const stack = await openStorageStack(config, logger);
  try {
    t.true(stack.device instanceof CheckedDevice, 'what NBD talks to');
    t.truthy(stack.cache, 'the cache is configured');
    t.true(stack.cache!.below instanceof CheckedDevice, 'what the cache writes back to');
    for (const leg of stack.mirror!.device.generation.legs) t.true(leg!.device instanceof CheckedDevice, `leg ${leg!.slot}`);
    await t.throwsAsync(stack.device.write(8 * MiB - 4096, Buffer.alloc(8192), { fua: false }), { code: 'EINVAL' });
    await stack.device.write(8 * MiB - 4096, Buffer.alloc(4096, 3), { fua: true });
    t.true(Buffer.alloc(4096, 3).equals(await readBack(stack.device, 8 * MiB - 4096)));
  } finally {
    await stack.close();
  }
  for (const leg of ['leg0.img', 'leg1.img']) {
    const bytes = fs.readFileSync(path.join(dir, leg));
    t.true(Buffer.alloc(4096, 3).equals(bytes.subarray(8 * MiB - 4096, 8 * MiB)), `${leg} has the last block`);
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

async function readBack(device: BlockDevice, offsetBytes: number): Promise<Buffer> {
  const target = Buffer.alloc(4096);
  await device.read(offsetBytes, target);
  return target;
}
