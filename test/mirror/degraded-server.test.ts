import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { adminRequest } from '../../tools/admin-client.js';
import { cli, hammerScript } from '../helpers/cli.js';
import { cliPath, startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, run } from '../helpers/tools.js';
import { statusWhen } from '../helpers/wait.js';

interface Status {
  health: string;
  legs: Array<{ state: string }>;
  regionCount: number;
  regions: { bitsSet: number; outOfSync: number };
  resync: { regionsTotal: number; kind: string };
}

test('a leg fails mid-workload (fault injection): the workload continues, status shows degraded, re-add resyncs only what changed', async (t) => {
  const dir = makeTempDir('degraded-');
  const config = path.join(dir, 'config.yaml');
  fs.writeFileSync(config, `
listen: { tcp: "127.0.0.1:0", unix: null, admin: admin.sock }
export: { name: disk }
storage:
  sizeBytes: 64MiB
  log: mirror.log
  regionSize: 256KiB
  sweepIntervalMs: 200
  legs:
    - path: leg0.img
    - path: leg1.img
      faults: { rules: [ { ops: [write, flush], error: EIO, armed: false } ] }
`);
  const admin = path.join(dir, 'admin.sock');
  const server = await startServerProcess(['--config', config]);
  try {
    // Fill the device once so the sweeper has cleared it before the failure.
    const fill = await run('/usr/bin/python3', [hammerScript, server.uri('disk'), '7', '1', String(64 << 20)], { timeoutMs: 60_000 });
    t.is(fill.code, 0, fill.stderr);
    await statusWhen<Status>(admin, (status) => status.regions.bitsSet === 0, 10_000, 100);
    const hammer = run('/usr/bin/python3', [hammerScript, server.uri('disk'), '8', '2', String(4 << 20)], { timeoutMs: 60_000 });
    await new Promise((resolve) => setTimeout(resolve, 500));
    await adminRequest(admin, { command: 'fault', slot: 1, action: 'trigger' });
    const result = await hammer;
    t.is(result.code, 0, result.stderr);
    t.true(Number(result.stdout) > 100, 'the workload kept going');
    t.false(result.stderr.includes('Error'), result.stderr);

    const degraded = JSON.parse((await cli(['status', '--admin', admin, '--json'])).stdout) as Status;
    t.is(degraded.health, 'degraded');
    t.is(degraded.legs[1].state, 'faulty');
    t.true(degraded.regions.bitsSet > 0 && degraded.regions.bitsSet <= 16, `bits set while degraded: ${degraded.regions.bitsSet}`);
    const text = await cli(['status', '--admin', admin]);
    t.regex(text.stdout, /health: degraded/);
    t.regex(text.stdout, /leg 1: faulty/);

    await adminRequest(admin, { command: 'fault', slot: 1, action: 'heal' });
    const readd = await cli(['re-add', '1', '--admin', admin]);
    t.is(readd.code, 0, readd.stderr);
    t.regex(readd.stdout, new RegExp(`${degraded.regions.bitsSet} regions to resync`));
    const status = await statusWhen<Status>(admin, (current) => current.legs[1].state === 'in_sync', 10_000, 50);
    t.is(status.legs[1].state, 'in_sync');
    t.is(status.resync.regionsTotal, degraded.regions.bitsSet, 'only the regions written while the leg was away');
    t.log(`re-add resynced ${status.resync.regionsTotal} of ${status.regionCount} regions`);
    const online = await cli(['check', '--admin', admin]);
    t.is(online.code, 0, online.stdout + online.stderr);
    t.regex(online.stdout, /mismatch_cnt 0/);
  } finally {
    t.is(await server.stop(), 0);
  }
  const offline = await cli(['check', '--config', config]);
  t.is(offline.code, 0, offline.stdout + offline.stderr);
  t.regex(offline.stdout, /mismatch_cnt 0/);
  const dump = await cli(['dump-log', path.join(dir, 'mirror.log')]);
  t.regex(dump.stdout, /clean shutdown: true/);
  t.regex(dump.stdout, /leg 1: \S+ in_sync/);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('create, replace online with the configuration updated, and refusals reported by the command line', async (t) => {
  const dir = makeTempDir('tools-');
  const config = path.join(dir, 'config.yaml');
  fs.writeFileSync(config, `# my mirror
listen: { tcp: "127.0.0.1:0", unix: null, admin: admin.sock }
storage:
  sizeBytes: 32MiB
  log: mirror.log
  legs:
    - path: a.img   # first disk
    - path: b.img
`);
  const created = await cli(['create', '--config', config]);
  t.is(created.code, 0, created.stderr);
  t.regex(created.stdout, /created mirror [0-9a-f-]{36}: 2 legs of 33554432 bytes/);
  const again = await cli(['create', '--config', config]);
  t.is(again.code, 2);
  t.regex(again.stderr, /refusing to overwrite/);
  const server = await startServerProcess(['--config', config]);
  const admin = path.join(dir, 'admin.sock');
  try {
    const qemu = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 3M', server.uri()]);
    t.is(qemu.code, 0, qemu.stderr);
    const replaced = await cli(['replace', '1', path.join(dir, 'c.img'), '--admin', admin]);
    t.is(replaced.code, 0, replaced.stderr);
    const status = await statusWhen<Status>(admin, (current) => current.legs[1].state === 'in_sync', 10_000, 50);
    t.is(status.legs[1].state, 'in_sync');
    const text = fs.readFileSync(config, 'utf8');
    t.regex(text, /c\.img/);
    t.regex(text, /# first disk/, 'comments kept');
    const bad = await cli(['re-add', '0', '--admin', admin]);
    t.is(bad.code, 2);
    t.regex(bad.stderr, /leg 0 is in_sync; only a faulty leg can be re-added/);
  } finally {
    t.is(await server.stop(), 0);
  }
  const check = await cli(['check', '--config', config]);
  t.regex(check.stdout, /mismatch_cnt 0/);
  // A truncated log stops the server from starting, with the reason.
  fs.truncateSync(path.join(dir, 'mirror.log'), 5000);
  const refused = await run(process.execPath, [cliPath, 'serve', '--config', config], { timeoutMs: 30_000 });
  t.is(refused.code, 2);
  t.regex(refused.stderr, /region log .*mirror\.log: (no valid copy|truncated)/);
  fs.rmSync(dir, { recursive: true, force: true });
});
