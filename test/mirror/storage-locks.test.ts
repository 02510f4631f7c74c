import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { cli } from '../helpers/cli.js';
import { startHolder } from '../helpers/holder-process.js';
import { startServerProcess } from '../helpers/server-process.js';
import { detachLoopDevices, makeLoopDevice } from '../helpers/loop-device.js';
import { makeTempDir, run, runOk } from '../helpers/tools.js';

function digest(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

test('a running mirror\'s files are refused to a second server and to offline tools; kill -9 frees them at once', async (t) => {
  const dir = makeTempDir('locks-');
  const [legA, legB, log, admin] = ['a.img', 'b.img', 'mirror.log', 'admin.sock'].map((name) => path.join(dir, name));
  const files = ['--leg', legA, legB, '--log', log];
  const server = await startServerProcess([...files, '--size', '32MiB', '--admin', admin, '--no-unix', '--sweep-interval-ms', '600000']);
  try {
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 1M 2M', server.uri()]);
    // Settled: with no writes and no sweep, the server leaves the files alone, so any change below is a refused command's.
    const before = [legA, legB, log].map(digest);

    // The same command twice (npm start in a second terminal). Before the locks the second server assembled
    // the mirror "after an unclean shutdown", resynced regions the first one was writing, stamped new events
    // into the labels and the log, and only then failed to bind; the next start refused the legs as newer
    // than the log.
    // Since the listeners are bound before any storage is opened, the same command is refused at its port,
    // before it comes near the files; on another port the locks refuse it.
    const twice = await cli(['serve', ...files, '--listen', `127.0.0.1:${server.port}`, '--no-unix', '--admin', admin]);
    t.is(twice.code, 2);
    t.regex(twice.stderr, new RegExp(`command line: --listen: 127\\.0\\.0\\.1:${server.port} is in use`), 'the flag that named the address');
    const second = await cli(['serve', ...files, '--listen', '127.0.0.1:0', '--no-unix', '--admin', path.join(dir, 'second.sock')]);
    t.is(second.code, 2);
    t.regex(second.stderr, /EBUSY: region log .*mirror\.log is in use: another process holds it for writing \(a running nbd-mirror server/);
    const plain = await cli(['serve', '--leg', legA, '--listen', '127.0.0.1:0']);
    t.is(plain.code, 2, 'one leg served as a plain export would write under the mirror');
    t.regex(plain.stderr, /EBUSY: leg .*a\.img is in use/);
    const created = await cli(['create', ...files, '--size', '32MiB', '--force']);
    t.is(created.code, 2);
    t.regex(created.stderr, /is in use/);
    const check = await cli(['check', ...files]);
    t.is(check.code, 2, 'an offline check would compare legs being written');
    t.regex(check.stderr, /leg .*a\.img is in use: .*act through the running server's admin socket/);
    const status = await cli(['status', ...files]);
    t.is(status.code, 0, status.stderr);
    t.regex(status.stdout, /in use: another process holds the files/);

    // Within the server one process holds every lock, so these are refused by identity instead.
    for (const [target, problem] of [[legA, /a\.img is leg 0 of this mirror/], [log, /mirror\.log is this mirror's region log/],
      [legB, /b\.img is the file leg 1 is using now; replace takes a new file/]] as const) {
      const replaced = await cli(['replace', '1', target, '--force', '--admin', admin]);
      t.is(replaced.code, 2, `replace with ${target}`);
      t.regex(replaced.stderr, problem);
    }
    t.deepEqual([legA, legB, log].map(digest), before, 'no refused command changed a byte');
    const read = await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x3c 1M 2M', server.uri()]);
    t.notRegex(read.stdout, /Pattern verification failed/);
  } finally {
    await server.kill();
  }
  // The kernel dropped the dead server's locks: the next start needs no operator.
  const again = await startServerProcess([...files, '--admin', admin, '--no-unix']);
  t.is(typeof again.logs.find((entry) => entry.msg === 'listening')?.recoveryRegions, 'number');
  t.is(await again.stop(), 0);
  const check = await cli(['check', ...files]);
  t.regex(check.stdout, /mismatch_cnt 0/);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a block-device leg is claimed like md claims one: refused while another program holds it, and not mkfs-able while served', async (t) => {
  const dir = makeTempDir('locks-bdev-');
  const backing = path.join(dir, 'backing.img');
  const loop = await makeLoopDevice(dir, 'backing', 64 * 1024 ** 2);
  try {
    // Another exclusive opener, as a mounted filesystem or an md array is.
    const holder = await startHolder(`import fs from 'node:fs';
      fs.openSync(process.argv[1], fs.constants.O_RDONLY | fs.constants.O_EXCL);
      console.log('ready');`, [loop]);
    try {
      const refused = await cli(['serve', '--leg', loop, '--listen', '127.0.0.1:0', '--no-unix']);
      t.is(refused.code, 2);
      t.regex(refused.stderr, /EBUSY: leg \/dev\/loop\d+ is in use: the kernel reports the block device busy \(mounted, part of an md or dm device/);
    } finally {
      await holder.stop();
    }
    const server = await startServerProcess(['--leg', loop, '--no-unix']);
    try {
      // FUA and flush go through the leg's other descriptors, which the claim must not refuse.
      await runOk('qemu-io', ['-f', 'raw', '-c', 'write -f -P 0x6d 0 1M', '-c', 'flush', '-c', 'read -P 0x6d 0 1M', server.uri()]);
      const mkfs = await run('mkfs.ext4', ['-q', '-F', loop], { timeoutMs: 60_000 });
      t.not(mkfs.code, 0, 'mkfs opens the device exclusively and is refused');
      t.regex(mkfs.stderr + mkfs.stdout, /in use|busy/i);
    } finally {
      t.is(await server.stop(), 0);
    }
    t.is(fs.readFileSync(backing).subarray(0, 1024 ** 2).compare(Buffer.alloc(1024 ** 2, 0x6d)), 0, 'the data reached the device untouched');
  } finally {
    await detachLoopDevices([loop]);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
