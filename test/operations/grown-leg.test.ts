import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { startConfiguredMirror, tool } from '../helpers/operator.js';
import { detachLoopDevices, makeLoopDevice } from '../helpers/loop-device.js';
import { startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, run, runOk } from '../helpers/tools.js';

const MiB = 1024 ** 2;

test('a leg that grew (truncate -s +1M, twice) keeps its data: the label is found at the old end and moved, nothing is rebuilt', async (t) => {
  const dir = makeTempDir('ops-grown');
  let server = await startConfiguredMirror(dir);
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 0 8M', '-c', 'flush', server.uri()]);
  t.is(await server.stop(), 0);
  const leg0 = path.join(dir, 'leg0.img');
  for (const round of [1, 2]) {
    // The second round finds the label a megabyte past the data area, where only a scan finds it.
    fs.truncateSync(leg0, fs.statSync(leg0).size + MiB);
    const offline = await tool(dir, ['status']);
    t.regex(offline.stdout, /leg 0: in_sync .* label: the leg changed size/, `round ${round}: status names the cause`);
    server = await startConfiguredMirror(dir);
    const grew = server.logs.find((entry) => String(entry.msg).startsWith('the leg grew'));
    t.truthy(grew, `round ${round}: the start says the leg grew`);
    t.is(server.logs.find((entry) => entry.msg === 'listening')?.recoveryRegions, 0, 'nothing to resync');
    const report = (await tool(dir, ['status', '--json'])).json as { health: string };
    t.is(report.health, 'optimal');
    await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x3c 0 8M', server.uri()]);
    t.is((await tool(dir, ['check'])).code, 0, 'legs agree');
    t.is(await server.stop(), 0);
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a block-device leg that grew (a loop device resized, as lvextend does) keeps its data and label', async (t) => {
  const dir = makeTempDir('ops-grown-bdev');
  const loops: string[] = [];
  try {
    loops.push(await makeLoopDevice(dir, 'a', 40 * MiB), await makeLoopDevice(dir, 'b', 40 * MiB));
    const args = ['--leg', ...loops, '--log', path.join(dir, 'm.log'), '--size', '32MiB', '--no-cache'];
    t.is((await run(process.execPath, [(await import('../helpers/server-process.js')).cliPath, 'create', '--force', ...args.slice(0, -1)])).code, 0);
    let server = await startServerProcess(args);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 0 4M', '-c', 'flush', server.uri()]);
    t.is(await server.stop(), 0);
    fs.truncateSync(path.join(dir, 'a.img'), 56 * MiB);
    await runOk('losetup', ['-c', loops[0]]);
    server = await startServerProcess(args);
    t.truthy(server.logs.find((entry) => String(entry.msg).startsWith('the leg grew')));
    await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x77 0 4M', server.uri()]);
    t.is(await server.stop(), 0);
  } finally {
    await detachLoopDevices(loops);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
