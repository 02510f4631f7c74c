import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { FileLeg } from '../../backends/file-leg.js';
import { CheckedDevice } from '../../blockdev/checked-device.js';
import { finishedNow } from '../../blockdev/types.js';
import { makeTempDir } from '../helpers/tools.js';

const MiB = 1024 * 1024;

test('FileLeg: small writes and cached reads finish before returning; FUA and writes over 1 MiB go to the thread pool', async (t) => {
  const dir = makeTempDir('file-leg-inline');
  const leg = await FileLeg.open({ path: path.join(dir, 'leg.img'), createSizeBytes: 4 * MiB });
  try {
    // After a slow write (a loaded machine) writes use the pool for a while: try again a bounded number of times.
    let inTurn = 0;
    for (let attempt = 0; attempt < 20 && inTurn === 0; attempt += 1) {
      const data = Buffer.alloc(MiB, 1 + attempt);
      const writing = leg.write(0, data, { fua: false });
      if (writing === finishedNow) inTurn += 1;
      else await new Promise((resolve) => setTimeout(resolve, 250));
      await writing;
    }
    t.is(inTurn, 1, 'a 1 MiB write finished in the turn');
    const target = Buffer.alloc(4096);
    t.is(leg.read(MiB - 4096, target), finishedNow, 'a 4k read of cached pages finished in the turn');
    const written = Buffer.alloc(4096);
    const fd = fs.openSync(path.join(dir, 'leg.img'), 'r');
    fs.readSync(fd, written, 0, 4096, MiB - 4096);
    fs.closeSync(fd);
    t.true(target.equals(written));
    const large = leg.write(MiB, Buffer.alloc(MiB + 4096, 7), { fua: false });
    t.not(large, finishedNow, 'over 1 MiB: the pool');
    await large;
    const fua = leg.write(0, Buffer.alloc(4096, 9), { fua: true });
    t.not(fua, finishedNow, 'FUA: the O_DSYNC descriptor, on the pool');
    await fua;
    // Ranges are checked once, at the checked entry every stack puts in front of each layer.
    const checked = CheckedDevice.wrap(leg, 'leg');
    t.is(checked.read(MiB - 4096, target), finishedNow, 'the checked entry keeps an in-turn read in the turn');
    await t.throwsAsync(checked.read(4 * MiB, target), { code: 'EINVAL' }, 'a bad range still rejects, not throws');
  } finally {
    await leg.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('FileLeg: one event-loop turn writes at most 8 MiB inline per leg; the rest of the burst goes to the pool', async (t) => {
  const dir = makeTempDir('file-leg-inline-turn');
  const leg = await FileLeg.open({ path: path.join(dir, 'leg.img'), createSizeBytes: 16 * MiB });
  try {
    // A slow inline write (a loaded machine) pauses inline writes for a while: try again a bounded number of times.
    let inTurnCounts: boolean[] = [];
    for (let attempt = 0; attempt < 20; attempt += 1) {
      const writes = Array.from({ length: 10 }, (_, index) => leg.write(index * MiB, Buffer.alloc(MiB, 1 + index), { fua: false }));
      inTurnCounts = writes.map((writing) => writing === finishedNow);
      await Promise.all(writes);
      if (inTurnCounts.slice(0, 8).every(Boolean)) break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    t.deepEqual(inTurnCounts, [true, true, true, true, true, true, true, true, false, false],
      'eight 1 MiB writes in the turn, then the pool until the next turn');
    const image = fs.readFileSync(path.join(dir, 'leg.img'));
    for (let index = 0; index < 10; index += 1) t.true(image.subarray(index * MiB, (index + 1) * MiB).equals(Buffer.alloc(MiB, 1 + index)));
  } finally {
    await leg.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
