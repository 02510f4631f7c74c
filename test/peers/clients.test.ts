import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { type ServerProcess, startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, run, runOk, sha256File, writeRandomFile } from '../helpers/tools.js';

// One server for this file; the tests run serially against it on distinct ranges.
let server: ServerProcess;
let dir: string;
const sizeBytes = 512 * 1024 * 1024;

test.before(async () => {
  dir = makeTempDir('clients');
  server = await startServerProcess(['--leg', path.join(dir, 'leg.img'), '--size', String(sizeBytes),
    '--export-name', 'disk', '--description', 'test export', '--unix', path.join(dir, 'nbd.sock')]);
});

test.after.always(async () => {
  await server?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test.serial('nbdinfo shows the export, its size, flags and base:allocation', async (t) => {
  const { stdout } = await runOk('nbdinfo', ['--json', server.uri('disk')]);
  const info = JSON.parse(stdout) as { exports: Array<Record<string, unknown>>; protocol: string };
  const entry = info.exports[0];
  t.is(info.protocol, 'newstyle-fixed');
  t.is(entry['export-name'], 'disk');
  t.is(entry['export-size'], sizeBytes);
  t.is(entry.description, 'test export');
  t.deepEqual(entry.contexts, ['base:allocation']);
  for (const flag of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn', 'can_cache', 'can_df']) {
    t.true(entry[flag] as boolean, flag);
  }
  t.false(entry.is_read_only as boolean);
  t.is(entry.block_size_maximum, 32 * 1024 * 1024);
  const { stdout: map } = await runOk('nbdinfo', ['--map', server.uri('disk')]);
  t.regex(map, /hole,zero/, 'a fresh leg is reported as a hole');
});

test.serial('nbdinfo --list lists the export, over TCP and the unix socket', async (t) => {
  const tcp = await runOk('nbdinfo', ['--list', '--json', server.uri()]);
  const listed = JSON.parse(tcp.stdout) as { exports: Array<{ 'export-name': string }> };
  t.deepEqual(listed.exports.map((entry) => entry['export-name']), ['disk']);
  const unix = await runOk('nbdinfo', ['--size', `nbd+unix:///disk?socket=${server.unixPath!}`]);
  t.is(unix.stdout.trim(), String(sizeBytes));
  const unknown = await run('nbdinfo', [server.uri('no-such-export')]);
  t.not(unknown.code, 0, 'an unknown export is refused');
});

test.serial('qemu-io writes patterns and reads them back, at unaligned offsets and the last byte', async (t) => {
  const uri = server.uri('disk');
  const commands = [
    'write -P 0x5a 0 64k', 'read -P 0x5a 0 64k',
    'write -P 0x11 100001 7777', 'read -P 0x11 100001 7777', 'read -P 0 65536 34465',
    `write -P 0x77 ${sizeBytes - 1} 1`, `read -P 0x77 ${sizeBytes - 1} 1`,
    `write -P 0x66 ${sizeBytes - 4096} 4095`, `read -P 0x66 ${sizeBytes - 4096} 4095`,
    'write -z 1m 1m', 'read -P 0 1m 1m',
    'write -P 0x42 -f 2m 64k', 'read -P 0x42 2m 64k', 'flush',
    'discard 4m 1m', 'read -P 0 4m 1m',
  ];
  const args = ['-f', 'raw'];
  for (const command of commands) args.push('-c', command);
  const result = await run('qemu-io', [...args, uri]);
  t.is(result.code, 0, result.stderr);
  t.notRegex(result.stdout, /Pattern verification failed|error/i, result.stdout);
  const beyond = await run('qemu-io', ['-f', 'raw', '-c', `read ${sizeBytes} 512`, uri]);
  t.regex(beyond.stdout + beyond.stderr, /Input\/output error|Invalid argument|out of range|failed/i);
});

test.serial('qemu-img info and convert round-trip an image', async (t) => {
  const { stdout } = await runOk('qemu-img', ['info', '--output=json', server.uri('disk')]);
  t.is((JSON.parse(stdout) as { 'virtual-size': number })['virtual-size'], sizeBytes);
  const source = path.join(dir, 'source.img');
  writeRandomFile(source, 16 * 1024 * 1024, 3);
  // Convert into the export (image smaller than the export: -n keeps the target), then back out.
  await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, server.uri('disk')]);
  const back = path.join(dir, 'back.img');
  await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', server.uri('disk'), back]);
  const whole = fs.readFileSync(back);
  t.is(whole.length, sizeBytes);
  t.true(whole.subarray(0, 16 * 1024 * 1024).equals(fs.readFileSync(source)), 'converted data reads back');
  fs.rmSync(back);
  const compare = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, server.uri('disk')]);
  t.regex(compare.stdout, /size mismatch|Images are identical/i, 'qemu-img compare runs against the export');
});

test.serial('nbdcopy copies a random 256 MiB image in and out with identical checksums', async (t) => {
  const image = path.join(dir, 'random-256m.img');
  writeRandomFile(image, 256 * 1024 * 1024, 9);
  const small = await startServerProcess(['--leg', path.join(dir, 'copy-leg.img'), '--size', '256MiB', '--no-unix']);
  try {
    await runOk('nbdcopy', ['--flush', image, small.uri()], { timeoutMs: 300_000 });
    const out = path.join(dir, 'copied-out.img');
    await runOk('nbdcopy', [small.uri(), out], { timeoutMs: 300_000 });
    t.is(sha256File(out), sha256File(image));
    t.is(await small.stop(), 0);
    // The data is on the leg itself after a clean stop.
    t.is(sha256File(path.join(dir, 'copy-leg.img')), sha256File(image));
  } finally {
    await small.stop();
  }
});

test.serial('fio with the nbd engine verifies random writes (crc32c)', async (t) => {
  const result = await run('fio', [
    '--name=verify', '--ioengine=nbd', `--uri=${server.uri('disk')}`, '--rw=randwrite', '--bs=4k',
    '--iodepth=32', '--size=64m', '--offset=128m', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1',
    '--verify_state_save=0',
    '--output-format=json',
  ], { timeoutMs: 300_000 });
  t.is(result.code, 0, result.stderr);
  const report = JSON.parse(result.stdout.slice(result.stdout.indexOf('{'))) as { jobs: Array<{ error: number; write: { io_bytes: number }; read: { io_bytes: number } }> };
  t.is(report.jobs[0].error, 0);
  t.is(report.jobs[0].write.io_bytes, 64 * 1024 * 1024);
  t.is(report.jobs[0].read.io_bytes, 64 * 1024 * 1024, 'every written block was read back and verified');
  const mixed = await run('fio', [
    '--name=mixed', '--ioengine=nbd', `--uri=${server.uri('disk')}`, '--rw=randrw', '--bs=4k-256k',
    '--iodepth=16', '--size=32m', '--offset=200m', '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0',
  ], { timeoutMs: 300_000 });
  t.is(mixed.code, 0, mixed.stderr);
});
