import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { checkpointFilePath } from '../../cbt/checkpoint-store.js';
import { cli } from '../helpers/cli.js';
import { projectRoot, type ServerProcess, startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, run } from '../helpers/tools.js';
import { waitUntil } from '../helpers/wait.js';

/**
 * Checkpoints for incremental backup, through real clients: the blocks
 * changed since a checkpoint are the NBD meta context
 * qemu:dirty-bitmap:NAME (nbdinfo --map, qemu-img map with x-dirty-bitmap),
 * and no kill -9 ever leaves a changed block reported clean.
 */
const MiB = 1024 * 1024;
const KiB = 1024;
const sizeBytes = 64 * MiB;
const granule = 64 * KiB;

interface Rig {
  dir: string;
  admin: string;
  log: string;
  start(extra?: string[]): Promise<ServerProcess>;
}

function rig(t: ExecutionContext): Rig {
  const dir = makeTempDir('checkpoints');
  const servers: ServerProcess[] = [];
  t.teardown(async () => {
    for (const server of servers) await server.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const admin = path.join(dir, 'admin.sock');
  const log = path.join(dir, 'mirror.log');
  return {
    dir, admin, log,
    start: async (extra = []) => {
      const server = await startServerProcess(['--leg', path.join(dir, 'leg0.img'), path.join(dir, 'leg1.img'), '--log', log,
        '--size', String(sizeBytes), '--admin', admin, '--no-unix', '--sweep-interval-ms', '200', ...extra]);
      servers.push(server);
      return server;
    },
  };
}

/** The dirty extents nbdinfo reports for the context, as [offset, length] pairs. */
async function dirtyExtents(server: ServerProcess, context: string): Promise<Array<[number, number]>> {
  const map = await run('nbdinfo', ['--json', `--map=${context}`, server.uri()]);
  if (map.code !== 0) throw new Error(`nbdinfo --map=${context}: ${map.stderr}`);
  return (JSON.parse(map.stdout) as Array<{ offset: number; length: number; type: number }>)
    .filter((extent) => (extent.type & 1) !== 0).map((extent) => [extent.offset, extent.length]);
}

async function qemuIo(server: ServerProcess, commands: string[]): Promise<void> {
  const result = await run('qemu-io', ['-f', 'raw', ...commands.flatMap((command) => ['-c', command]), server.uri()], { timeoutMs: 60_000 });
  if (result.code !== 0) throw new Error(`qemu-io ${commands.join('; ')}: ${result.stderr}`);
}

test('a checkpoint\'s changed blocks are qemu:dirty-bitmap:NAME for nbdinfo and qemu-img, exact at 64 KiB; names are checked', async (t) => {
  const r = rig(t);
  const server = await r.start(['--metrics', '127.0.0.1:0']);
  await qemuIo(server, ['write -P 1 0 4M']);
  const created = await cli(['checkpoint', 'create', 'full-1', '--admin', r.admin]);
  t.is(created.code, 0, created.stderr);
  t.regex(created.stdout, /checkpoint full-1 created .* qemu:dirty-bitmap:full-1 \(granularity 65536 bytes\)/);
  t.deepEqual(await dirtyExtents(server, 'qemu:dirty-bitmap:full-1'), [], 'nothing changed yet');
  // A write inside one granule, one across two, a trim and a zeroing.
  await qemuIo(server, ['write -P 2 1M 4k', `write -P 3 ${2 * MiB - 4 * KiB} 8k`, 'discard 8M 64k', 'write -z 12M 128k']);
  t.deepEqual(await dirtyExtents(server, 'qemu:dirty-bitmap:full-1'),
    [[MiB, granule], [2 * MiB - granule, 2 * granule], [8 * MiB, granule], [12 * MiB, 2 * granule]]);

  const second = await cli(['checkpoint', 'create', 'inc-2', '--admin', r.admin]);
  t.is(second.code, 0, second.stderr);
  await qemuIo(server, ['write -P 4 30M 4k']);
  t.deepEqual(await dirtyExtents(server, 'qemu:dirty-bitmap:inc-2'), [[30 * MiB, granule]], 'only what changed since inc-2');
  t.is((await dirtyExtents(server, 'qemu:dirty-bitmap:full-1')).length, 5, 'full-1 keeps counting');

  // libnbd from Python, both contexts in one block status reply, as a Python backup tool reads them.
  const python = await run('/usr/bin/python3', [path.join(projectRoot, 'test', 'python', 'dirty_bitmap.py'), server.uri(), 'inc-2']);
  t.is(python.code, 0, python.stderr);
  t.deepEqual(JSON.parse(python.stdout), [[30 * MiB, granule]]);

  const contexts = await run('nbdinfo', ['--list', '--content', server.uri()]);
  t.regex(contexts.stdout, /base:allocation\s+qemu:dirty-bitmap:full-1\s+qemu:dirty-bitmap:inc-2/);
  // QEMU reads the bitmap through x-dirty-bitmap, reporting a dirty extent as "data": false.
  const map = await run('qemu-img', ['map', '--output=json', '--image-opts',
    `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${server.port},x-dirty-bitmap=qemu:dirty-bitmap:inc-2`]);
  t.is(map.code, 0, map.stderr);
  const extents = JSON.parse(map.stdout) as Array<{ start: number; length: number; data: boolean }>;
  t.deepEqual(extents.filter((extent) => !extent.data).map((extent) => [extent.start, extent.length]), [[30 * MiB, granule]]);

  const list = await cli(['checkpoint', 'list', '--json', '--admin', r.admin]);
  const listed = JSON.parse(list.stdout) as Array<{ name: string; dirtyBytes: number }>;
  t.deepEqual(listed.map((entry) => [entry.name, entry.dirtyBytes]), [['full-1', 7 * granule], ['inc-2', granule]]);
  t.regex((await cli(['status', '--admin', r.admin])).stdout, /checkpoint inc-2: created .*, 0\.1 MiB changed since/);
  const metricsPort = (server.logs.find((entry) => entry.msg === 'listening')?.metrics as { port: number }).port;
  const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  t.regex(metrics, /^nbd_mirror_checkpoint_changed_bytes\{name="full-1"\} 458752$/m);

  for (const [name, problem] of [['full-1', /exists already/], ['a b', /may hold only letters/], ['', /is empty|missing required argument/],
    ['x'.repeat(96), /longer than 95 bytes/]] as const) {
    const refused = await cli(['checkpoint', 'create', name, '--admin', r.admin]);
    t.not(refused.code, 0);
    t.regex(refused.stderr, problem, name);
  }
  const removed = await cli(['checkpoint', 'remove', 'full-1', '--admin', r.admin]);
  t.is(removed.code, 0, removed.stderr);
  t.notRegex((await run('nbdinfo', ['--list', '--content', server.uri()])).stdout, /full-1/);
  t.regex((await cli(['checkpoint', 'remove', 'full-1', '--admin', r.admin])).stderr, /no checkpoint named full-1/);
  t.is(await server.stop(), 0);
  const offline = await cli(['checkpoint', 'list', '--leg', path.join(r.dir, 'leg0.img'), path.join(r.dir, 'leg1.img'), '--log', r.log]);
  t.regex(offline.stdout, /^inc-2 .*changed since: 65536 bytes$/m, `offline list after a clean stop is exact: ${offline.stdout}${offline.stderr}`);
});

test('kill -9 at any moment never leaves a changed block reported clean, and regions nobody wrote stay clean', async (t) => {
  const r = rig(t);
  let server = await r.start();
  t.is((await cli(['checkpoint', 'create', 'c', '--admin', r.admin])).code, 0);
  const written: number[] = [];
  let seed = 7;
  const random = (below: number): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    // The low bits of this generator cycle quickly; the high ones do not.
    return (seed >>> 12) % below;
  };
  // The first half of the device is written; the second half never is.
  for (let round = 0; round < 6; round += 1) {
    const offsets = Array.from({ length: 8 }, () => random((sizeBytes / 2) / (4 * KiB)) * 4 * KiB);
    await qemuIo(server, [...offsets.map((offset) => `write -P ${round + 1} ${offset} 4k`), 'flush']);
    written.push(...offsets);
    // Every other round past a few sweeps (bits cleared, after the marks were persisted), the others right away.
    await new Promise((resolve) => setTimeout(resolve, round % 2 === 0 ? 50 : 2500));
    await server.kill();
    server = await r.start();
    const dirty = await dirtyExtents(server, 'qemu:dirty-bitmap:c');
    const isDirty = (offset: number): boolean => dirty.some(([start, length]) => offset >= start && offset < start + length);
    const falseClean = written.filter((offset) => !isDirty(offset));
    t.deepEqual(falseClean, [], `round ${round}: changed blocks reported clean`);
    t.false(dirty.some(([start, length]) => start + length > sizeBytes / 2 + MiB),
      `round ${round}: the half nobody wrote is clean, but for the region log's dirty-ahead: ${JSON.stringify(dirty.slice(-3))}`);
  }
  t.is(await server.stop(), 0);
});

test('a corrupted checkpoint file stops the start with the reason, and nothing is overwritten', async (t) => {
  const r = rig(t);
  const server = await r.start();
  t.is((await cli(['checkpoint', 'create', 'c', '--admin', r.admin])).code, 0);
  t.is(await server.stop(), 0);
  const file = checkpointFilePath(r.log);
  const bytes = fs.readFileSync(file);
  bytes[4096 + 3] ^= 0xff;
  fs.writeFileSync(file, bytes);
  const refused = await cli(['serve', '--leg', path.join(r.dir, 'leg0.img'), path.join(r.dir, 'leg1.img'), '--log', r.log,
    '--no-unix', '--no-admin', '-p', '0']);
  t.not(refused.code, 0);
  t.regex(refused.stderr, /checkpoint file .*mirror\.log\.checkpoints is unreadable: checksum mismatch .*move the file away to start without checkpoints/);
  t.true(fs.readFileSync(file).equals(bytes), 'the file is left as it was');
});

/** The export's bytes, as a client reads them. */
async function exportBytes(server: ServerProcess, dir: string): Promise<Buffer> {
  const file = path.join(dir, 'export-now.img');
  fs.rmSync(file, { force: true });
  const copy = await run('nbdcopy', [server.uri(), file]);
  if (copy.code !== 0) throw new Error(`nbdcopy: ${copy.stderr}`);
  const bytes = fs.readFileSync(file);
  fs.rmSync(file);
  return bytes;
}

test('the backup chain: a full pull at one checkpoint, writes, an incremental pull since it makes the image equal the export', async (t) => {
  const r = rig(t);
  const server = await r.start();
  await qemuIo(server, ['write -P 0x11 0 8M', 'write -P 0x12 20M 1M']);
  t.is((await cli(['checkpoint', 'create', 'c1', '--admin', r.admin])).code, 0);
  const image = path.join(r.dir, 'backup.img');
  const full = await cli(['backup', 'pull', server.uri(), '--to', image, '--json']);
  t.is(full.code, 0, full.stderr);
  const fullResult = JSON.parse(full.stdout) as { mode: string; copiedBytes: number; sizeBytes: number };
  t.is(fullResult.mode, 'full');
  t.true(fullResult.copiedBytes < sizeBytes, `only allocated extents copied (${fullResult.copiedBytes} of ${sizeBytes})`);
  t.true(fs.readFileSync(image).equals(await exportBytes(server, r.dir)), 'the full image is the export');

  await qemuIo(server, ['write -P 0x21 1M 4k', 'write -P 0x22 40M 64k', 'discard 20M 1M', 'write -z 4M 128k']);
  t.is((await cli(['checkpoint', 'create', 'c2', '--admin', r.admin])).code, 0);
  const incremental = await cli(['backup', 'pull', server.uri(), '--to', image, '--since', 'c1', '--json']);
  t.is(incremental.code, 0, incremental.stderr);
  const incrementalResult = JSON.parse(incremental.stdout) as { mode: string; copiedBytes: number; extents: number };
  t.is(incrementalResult.mode, 'incremental');
  t.is(incrementalResult.copiedBytes, granule + granule + MiB + 2 * granule, 'exactly the changed granules');
  t.true(fs.readFileSync(image).equals(await exportBytes(server, r.dir)), 'the updated image is the export now');

  const missing = await cli(['backup', 'pull', server.uri(), '--to', image, '--since', 'nope']);
  t.regex(missing.stderr, /does not offer qemu:dirty-bitmap:nope/);
  const exists = await cli(['backup', 'pull', server.uri(), '--to', image]);
  t.regex(exists.stderr, /exists; a full pull writes a new image/);
  t.is(await server.stop(), 0);
});

test('backup pull --since reads a bitmap served by qemu-nbd -B as well', async (t) => {
  const dir = makeTempDir('pull-qemu');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const qcow2 = path.join(dir, 'disk.qcow2');
  for (const command of [['qemu-img', 'create', '-q', '-f', 'qcow2', qcow2, '16M'], ['qemu-img', 'bitmap', '--add', qcow2, 'b0'],
    ['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x33 1M 64k', '-c', 'write -P 0x34 9M 128k', qcow2]]) {
    const result = await run(command[0], command.slice(1));
    t.is(result.code, 0, `${command.join(' ')}: ${result.stderr}`);
  }
  // The previous full backup: the disk as it was when b0 started, empty.
  const image = path.join(dir, 'backup.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, 16 * MiB);
  const socket = path.join(dir, 'nbd.sock');
  const qemuNbd = spawn('qemu-nbd', ['-r', '-f', 'qcow2', '-B', 'b0', '-k', socket, '-x', 'disk', qcow2], { stdio: 'ignore' });
  t.teardown(() => { qemuNbd.kill('SIGKILL'); });
  t.true(await waitUntil(() => fs.existsSync(socket), 10_000, 50), 'qemu-nbd listens');
  const pulled = await cli(['backup', 'pull', `nbd+unix:///disk?socket=${socket}`, '--to', image, '--since', 'b0', '--json']);
  t.is(pulled.code, 0, pulled.stderr);
  t.is((JSON.parse(pulled.stdout) as { copiedBytes: number }).copiedBytes, 3 * granule);
  const raw = path.join(dir, 'disk.raw');
  t.is((await run('qemu-img', ['convert', '-O', 'raw', qcow2, raw])).code, 0);
  t.true(fs.readFileSync(image).equals(fs.readFileSync(raw)), 'the image equals the disk');
});

test('a point-in-time backup view: pulled while writes run, full then since the last one, each image is the export at its start', async (t) => {
  const r = rig(t);
  const server = await r.start(['--export-name', 'disk']);
  const live = server.uri('disk');
  await qemuIo(server, ['write -P 0x41 0 24M']);
  const snapshot = async (name: string): Promise<Buffer> => {
    const file = path.join(r.dir, `${name}.expected`);
    t.is((await run('nbdcopy', [live, file])).code, 0);
    return fs.readFileSync(file);
  };
  // Backup 1, full: the export is copied with nothing writing, then the view starts and writes begin at once.
  const atFirst = await snapshot('first');
  const started = await cli(['backup', 'start', 'b1', '--admin', r.admin]);
  t.is(started.code, 0, started.stderr);
  t.regex((await run('nbdinfo', ['--list', live])).stdout, /export="disk@b1"/);
  const writer = qemuIo(server, ['write -P 0x42 0 8M', 'write -P 0x43 12M 4M', 'discard 20M 1M']);
  const image = path.join(r.dir, 'backup.img');
  const full = await cli(['backup', 'pull', server.uri('disk@b1'), '--to', image]);
  await writer;
  t.is(full.code, 0, full.stderr);
  t.true(fs.readFileSync(image).equals(atFirst), 'the full image is the export when b1 started, whatever was written since');
  const refused = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4k', server.uri('disk@b1')]);
  t.not(refused.code, 0, 'the view is read-only');
  t.regex((await cli(['status', '--admin', r.admin])).stdout, /backup b1: started .*, scratch \d+(\.\d)? MiB used of 1024 MiB/);
  t.is((await cli(['backup', 'stop', 'b1', '--admin', r.admin])).code, 0);
  t.false(fs.readdirSync(r.dir).some((file) => file.endsWith('.scratch')), 'the scratch file is gone');

  // Backup 2, incremental since b1, with writes again during the pull.
  await qemuIo(server, ['write -P 0x44 30M 2M']);
  const atSecond = await snapshot('second');
  t.is((await cli(['backup', 'start', 'b2', '--since', 'b1', '--admin', r.admin])).code, 0);
  const writer2 = qemuIo(server, ['write -P 0x45 30M 4M', 'write -P 0x46 0 1M']);
  const incremental = await cli(['backup', 'pull', server.uri('disk@b2'), '--to', image, '--since', 'b1', '--json']);
  await writer2;
  t.is(incremental.code, 0, incremental.stderr);
  t.true(fs.readFileSync(image).equals(atSecond), 'the updated image is the export when b2 started');
  t.is((JSON.parse(incremental.stdout) as { copiedBytes: number }).copiedBytes, 8 * MiB + 4 * MiB + MiB + 2 * MiB,
    'the blocks changed between b1 and b2, frozen at b2 (not the writes after it)');
  t.is((await cli(['backup', 'stop', 'b2', '--admin', r.admin])).code, 0);
  t.is(await server.stop(), 0);
});

test('a backup whose scratch space runs out fails with the reason, and the live export never does', async (t) => {
  const r = rig(t);
  const server = await r.start(['--export-name', 'disk', '--metrics', '127.0.0.1:0']);
  await qemuIo(server, ['write -P 0x51 0 8M']);
  t.is((await cli(['backup', 'start', 'small', '--scratch-size', '1MiB', '--admin', r.admin])).code, 0);
  await qemuIo(server, ['write -P 0x52 0 4M', 'flush']);
  const pull = await cli(['backup', 'pull', server.uri('disk@small'), '--to', path.join(r.dir, 'small.img')]);
  t.not(pull.code, 0);
  t.regex(pull.stderr, /scratch space full: 1048576 bytes/);
  t.regex((await cli(['status', '--admin', r.admin])).stdout, /backup small: .*FAILED \(scratch space full/);
  const metricsPort = (server.logs.find((entry) => entry.msg === 'listening')?.metrics as { port: number }).port;
  t.regex(await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text(), /^nbd_mirror_backup_failed\{name="small"\} 1$/m);
  const read = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x52 0 4M', '-c', 'read -P 0x51 4M 4M', server.uri('disk')]);
  t.is(read.code, 0, `the live export took every write: ${read.stdout}${read.stderr}`);
  const stopped = await cli(['backup', 'stop', 'small', '--admin', r.admin]);
  t.regex(stopped.stdout, /the view had failed: scratch space full/);
  t.is(await server.stop(), 0);
});

test('a crash during a backup ends the view and removes its scratch file; the checkpoint stays', async (t) => {
  const r = rig(t);
  let server = await r.start();
  t.is((await cli(['backup', 'start', 'b1', '--admin', r.admin])).code, 0);
  await qemuIo(server, ['write -P 0x61 0 1M']);
  t.true(fs.readdirSync(r.dir).some((file) => file.endsWith('.scratch')));
  await server.kill();
  server = await r.start();
  t.false(fs.readdirSync(r.dir).some((file) => file.endsWith('.scratch')), 'no scratch file after the restart');
  t.regex((await cli(['checkpoint', 'list', '--admin', r.admin])).stdout, /^b1 /m);
  t.deepEqual(await dirtyExtents(server, 'qemu:dirty-bitmap:b1'), [[0, MiB]], 'the write after b1 is reported (its whole region after the crash)');
  t.notRegex((await run('nbdinfo', ['--list', server.uri()])).stdout, /@b1/, 'no view is served');
  t.is(await server.stop(), 0);
});

test('a crash inside checkpoint create, before or after the file is renamed into place, leaves the old file or the new one', async (t) => {
  for (const [point, present] of [['checkpoint.before-rename', false], ['checkpoint.after-rename', true]] as const) {
    const r = rig(t);
    let server = await r.start(['--crash-point', `${point}@2:kill`]);
    t.is((await cli(['checkpoint', 'create', 'c1', '--admin', r.admin])).code, 0, 'the first reach does not strike');
    const crashed = await cli(['checkpoint', 'create', 'c2', '--admin', r.admin]);
    t.not(crashed.code, 0, `${point}: the server died answering`);
    t.not(await server.exited, 0);
    server = await r.start();
    const listed = (await cli(['checkpoint', 'list', '--admin', r.admin])).stdout;
    t.regex(listed, /^c1 /m, `${point}: the older checkpoint is intact`);
    t.is(/^c2 /m.test(listed), present, `${point}: c2 ${present ? 'is' : 'is not'} there`);
    await qemuIo(server, ['write -P 1 5M 4k']);
    t.deepEqual(await dirtyExtents(server, 'qemu:dirty-bitmap:c1'), [[5 * MiB, granule]]);
    t.is(await server.stop(), 0);
  }
});

test('a plain export has no checkpoints, and says why', async (t) => {
  const dir = makeTempDir('checkpoints-plain');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const admin = path.join(dir, 'admin.sock');
  const server = await startServerProcess(['--leg', path.join(dir, 'plain.img'), '--size', String(sizeBytes), '--admin', admin, '--no-unix']);
  t.teardown(() => server.kill());
  const refused = await cli(['checkpoint', 'create', 'c', '--admin', admin]);
  t.not(refused.code, 0);
  t.regex(refused.stderr, /checkpoints need a mirror \(its region log makes them crash-safe\)/);
  t.regex((await cli(['backup', 'start', 'b', '--admin', admin])).stderr, /checkpoints need a mirror/);
  t.notRegex((await run('nbdinfo', ['--list', '--content', server.uri()])).stdout, /qemu:dirty-bitmap/);
  t.is(await server.stop(), 0);
});
