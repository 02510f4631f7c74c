import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { cli } from '../helpers/cli.js';
import { startServerProcess } from '../helpers/server-process.js';
import { detachLoopDevices, makeLoopDevice } from '../helpers/loop-device.js';
import { makeTempDir, runOk } from '../helpers/tools.js';
import { statusWhen } from '../helpers/wait.js';

const MiB = 1024 ** 2;

interface Status {
  regions: { outOfSync: number };
  resync: { running: boolean; regionsDone: number; regionsTotal: number };
}

/** Writes random bytes straight to a device, as an earlier user of the disk left them. */
function scribble(device: string, offsetBytes: number, lengthBytes: number): void {
  const fd = fs.openSync(device, 'r+');
  try {
    fs.writeSync(fd, crypto.randomBytes(lengthBytes), 0, lengthBytes, offsetBytes);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

test('a mirror over two block devices (loop devices): create syncs their old contents, and kill -9 recovery resyncs them', async (t) => {
  const dir = makeTempDir('bdev-mirror-');
  const loops: string[] = [];
  try {
    for (const [name, bytes] of [['a', 40 * MiB], ['b', 40 * MiB], ['small', 32 * MiB]] as const) {
      loops.push(await makeLoopDevice(dir, name, bytes));
    }
    const [legA, legB, small] = loops;
    scribble(legA, 3 * MiB, 2 * MiB);
    scribble(legB, 20 * MiB, MiB);
    const log = path.join(dir, 'mirror.log');
    const files = ['--leg', legA, legB, '--log', log];

    const unforced = await cli(['create', ...files, '--size', '32MiB']);
    t.is(unforced.code, 2);
    t.regex(unforced.stderr, /refusing to overwrite \/dev\/loop\d+, \/dev\/loop\d+ \(use --force/);
    const labelArea = (): Buffer => fs.readFileSync(path.join(dir, 'a.img')).subarray(40 * MiB - 8192);
    const labelBefore = labelArea();
    const tooSmall = await cli(['create', '--leg', legA, small, '--log', log, '--size', '32MiB', '--force']);
    t.is(tooSmall.code, 2);
    t.regex(tooSmall.stderr, /block device \/dev\/loop\d+ holds 33554432 bytes, fewer than the 33554432 of data plus the 8192-byte label at its end/);
    t.deepEqual(labelArea(), labelBefore, 'the refusal came before the first leg was labelled');
    t.false(fs.existsSync(log));

    // A thin pool is a file sized by its capacity: on a device it is refused before anything is written.
    const config = path.join(dir, 'thin.yaml');
    fs.writeFileSync(config, `storage:\n  sizeBytes: 32MiB\n  log: ${log}\n  legs:\n    - path: ${legA}\n` +
      `    - path: ${legB}\n      thin: { poolSize: 16MiB }\n`);
    const devicesBefore = ['a.img', 'b.img'].map((name) => fs.readFileSync(path.join(dir, name)));
    const thin = await cli(['create', '--config', config, '--force']);
    t.is(thin.code, 2);
    t.regex(thin.stderr, /thin pool \/dev\/loop\d+ is a block device; a thin pool is a regular file/);
    t.true(['a.img', 'b.img'].every((name, index) => fs.readFileSync(path.join(dir, name)).equals(devicesBefore[index])),
      'neither device was touched, not even the plain leg listed first');

    const created = await cli(['create', ...files, '--size', '32MiB', '--force']);
    t.is(created.code, 0, created.stderr);
    t.regex(created.stdout, /a block device keeps its old contents, so the first start syncs every region from the source leg/);
    const before = await cli(['check', ...files]);
    t.regex(before.stdout, /mismatch_cnt 3 \(regions 3, 4, 20\)/, 'the old contents differ: this is why the first start syncs');

    const admin = path.join(dir, 'admin.sock');
    const server = await startServerProcess([...files, '--admin', admin, '--no-unix']);
    try {
      const synced = await statusWhen<Status>(admin, (status) => !status.resync.running && status.regions.outOfSync === 0, 30_000, 50);
      t.is(synced.regions.outOfSync, 0);
      t.is(synced.resync.regionsTotal, 32, 'every region of the new mirror was synced');
      await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x4e 19M 3M', server.uri()]);
    } finally {
      await server.kill();
    }
    const again = await startServerProcess([...files, '--admin', admin, '--no-unix']);
    try {
      const recovered = await statusWhen<Status>(admin, (status) => !status.resync.running && status.regions.outOfSync === 0, 30_000, 50);
      t.is(recovered.regions.outOfSync, 0, 'recovery resync over block devices finished');
      const read = await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x4e 19M 3M', again.uri()]);
      t.notRegex(read.stdout, /Pattern verification failed/);
    } finally {
      t.is(await again.stop(), 0);
    }
    const after = await cli(['check', ...files]);
    t.regex(after.stdout, /mismatch_cnt 0/);
  } finally {
    await detachLoopDevices(loops);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a region log on a block device: created only if it fits, found again after a crash, and after copy 0\'s header is destroyed', async (t) => {
  const dir = makeTempDir('bdev-log-');
  const loops: string[] = [];
  try {
    loops.push(await makeLoopDevice(dir, 'log', MiB), await makeLoopDevice(dir, 'tiny', 8192));
    const [logDevice, tiny] = loops;
    const legs = ['--leg', path.join(dir, 'a.img'), path.join(dir, 'b.img')];
    const tooSmall = await cli(['create', ...legs, '--log', tiny, '--size', '32MiB', '--force']);
    t.is(tooSmall.code, 2);
    t.regex(tooSmall.stderr, /region log \/dev\/loop\d+: the device holds 8192 bytes; a log of 32 regions needs 16384/);
    const created = await cli(['create', ...legs, '--log', logDevice, '--size', '32MiB', '--force']);
    t.is(created.code, 0, created.stderr);
    t.notRegex(created.stdout, /syncs every region/, 'file legs start identical: only a block-device leg needs the initial sync');

    const files = [...legs, '--log', logDevice];
    // No sweep can clear the bits before the kill.
    const server = await startServerProcess([...files, '--no-unix', '--sweep-interval-ms', '600000']);
    try {
      await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x2f 5M 2M', server.uri()]);
    } finally {
      await server.kill();
    }
    const dump = await cli(['dump-log', logDevice]);
    t.regex(dump.stdout, /dirty regions \(2\): 5 6/, 'the bits set before the crash are read back from the device');

    // Copy 0's header gone: copy 1 must still be found, by a header that puts it exactly where it is.
    const fd = fs.openSync(logDevice, 'r+');
    fs.writeSync(fd, Buffer.alloc(4096), 0, 4096, 0);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    const damaged = await cli(['dump-log', logDevice]);
    t.regex(damaged.stdout, /copy 0: no region log header found\n {2}copy 1: sequence \d+/);
    const again = await startServerProcess([...files, '--no-unix']);
    t.is(typeof again.logs.find((entry) => entry.msg === 'listening')?.recoveryRegions, 'number');
    t.is(await again.stop(), 0);
    const check = await cli(['check', ...files]);
    t.regex(check.stdout, /mismatch_cnt 0/);
  } finally {
    await detachLoopDevices(loops);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
