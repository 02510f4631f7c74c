import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { cli } from '../helpers/cli.js';
import { detachLoopDevices, makeLoopDevice } from '../helpers/loop-device.js';
import { startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, runOk } from '../helpers/tools.js';

const MiB = 1024 ** 2;

test('a faulted block-device leg is re-added online, and replace onto a block device works online (mdadm --re-add)', async (t) => {
  const dir = makeTempDir('ops-bdev-readd');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const loops: string[] = [];
  try {
    for (const name of ['a', 'b', 'c']) loops.push(await makeLoopDevice(dir, name, 40 * MiB));
    const log = path.join(dir, 'm.log');
    const admin = path.join(dir, 'admin.sock');
    t.is((await cli(['create', '--force', '--leg', loops[0], loops[1], '--log', log, '--size', '32MiB'])).code, 0);
    const server = await startServerProcess(['--leg', loops[0], loops[1], '--log', log, '--admin', admin, '--no-cache']);
    try {
      await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 32M', '-c', 'flush', server.uri()]);
      await cli(['resync', '--wait', '--admin', admin]);
      t.is((await cli(['fail', '1', '--admin', admin])).code, 0);
      await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x22 4M 2M', '-c', 'flush', server.uri()]);
      const readded = await cli(['re-add', '1', '--wait', '--admin', admin]);
      t.is(readded.code, 0, readded.stderr);
      t.regex(readded.stdout, /re-added; \d+ regions? to resync/);
      t.regex(readded.stdout, /health: optimal/);
      t.is((await cli(['check', '--admin', admin])).code, 0);
      t.is((await cli(['fail', '1', '--admin', admin])).code, 0);
      const replaced = await cli(['replace', '1', loops[2], '--force', '--wait', '--admin', admin]);
      t.is(replaced.code, 0, replaced.stderr);
      t.regex(replaced.stdout, /health: optimal/);
      const check = await cli(['check', '--admin', admin]);
      t.is(check.code, 0, check.stdout);
      t.regex(check.stdout, /mismatch_cnt 0/);
    } finally {
      t.is(await server.stop(), 0);
    }
  } finally {
    await detachLoopDevices(loops);
  }
});
