import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { FileLeg } from '../../backends/file-leg.js';
import type { Extent } from '../../blockdev/types.js';
import { native } from '../../sys/native.js';
import { makeTempDir } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;

const data = (offsetBytes: number, lengthBytes: number): Extent => ({ offsetBytes, lengthBytes, hole: false, zero: false });
const hole = (offsetBytes: number, lengthBytes: number): Extent => ({ offsetBytes, lengthBytes, hole: true, zero: true });

// The leg remembers the last data extent it found so block status inside it costs no lseek; these
// queries land inside a remembered extent right after a punch, so a memory that outlived the punch fails them.
test('FileLeg block status stays exact when ranges inside a remembered data extent are punched', async (t) => {
  if (native === undefined) {
    t.pass('without the native addon a file leg reports everything as data');
    return;
  }
  const dir = makeTempDir('file-leg-extents');
  const leg = await FileLeg.open({ path: path.join(dir, 'leg.img'), createSizeBytes: 4 * MiB });
  try {
    t.deepEqual(await leg.blockStatus(0, 4 * MiB), [hole(0, 4 * MiB)]);
    await leg.write(MiB, Buffer.alloc(MiB, 1), { fua: false });
    t.deepEqual(await leg.blockStatus(0, 4 * MiB), [hole(0, MiB), data(MiB, MiB), hole(2 * MiB, 2 * MiB)]);
    t.deepEqual(await leg.blockStatus(MiB + 64 * KiB, 64 * KiB), [data(MiB + 64 * KiB, 64 * KiB)]);

    await leg.trim(MiB + 256 * KiB, 256 * KiB, { fua: false });
    t.deepEqual(await leg.blockStatus(MiB + 256 * KiB, 256 * KiB), [hole(MiB + 256 * KiB, 256 * KiB)], 'a trimmed range is a hole');
    t.deepEqual(await leg.blockStatus(MiB, MiB),
      [data(MiB, 256 * KiB), hole(MiB + 256 * KiB, 256 * KiB), data(MiB + 512 * KiB, 512 * KiB)]);

    t.deepEqual(await leg.blockStatus(MiB + 512 * KiB, 64 * KiB), [data(MiB + 512 * KiB, 64 * KiB)]);
    await leg.writeZeroes(MiB + 512 * KiB, 128 * KiB, { fua: false, noHole: false, fast: false });
    t.deepEqual(await leg.blockStatus(MiB + 512 * KiB, 64 * KiB), [hole(MiB + 512 * KiB, 64 * KiB)],
      'write-zeroes that may punch leaves a hole');

    await leg.write(MiB + 256 * KiB, Buffer.alloc(64 * KiB, 2), { fua: false });
    t.deepEqual(await leg.blockStatus(MiB + 256 * KiB, 128 * KiB), [data(MiB + 256 * KiB, 64 * KiB), hole(MiB + 320 * KiB, 64 * KiB)],
      'a write into a hole is data');
  } finally {
    await leg.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
