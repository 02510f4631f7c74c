import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { cli } from '../helpers/cli.js';
import { serveRemote } from '../helpers/remote-exports.js';
import { startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, run } from '../helpers/tools.js';

const MiB = 1024 * 1024;

test('create, offline status and check, and online repair work with a remote leg', async (t) => {
  const dir = makeTempDir('remote-tools');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const remote = await serveRemote(t, 'qemu-nbd', { sizeBytes: 17 * MiB });
  const local = path.join(dir, 'leg0.img');
  const log = path.join(dir, 'm.log');
  const legs = ['--leg', local, remote.uri, '--log', log];
  const created = await cli(['create', ...legs, '--size', '16MiB', '--json']);
  t.is(created.code, 0, created.stderr);
  t.true((JSON.parse(created.stdout) as { initialSync: boolean }).initialSync, 'an existing export is synced in full at the first start');
  const again = await cli(['create', '--leg', path.join(dir, 'other.img'), remote.uri, '--log', path.join(dir, 'other.log'), '--size', '16MiB']);
  t.not(again.code, 0);
  t.regex(again.stderr, /already holds leg 1 of mirror .*refusing to take it over/);

  const server = await startServerProcess([...legs, '--admin', path.join(dir, 'admin.sock')]);
  try {
    t.is((await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 0 4M', '-c', 'flush', server.uri()])).code, 0);
    await cli(['resync', '--wait', '--admin', path.join(dir, 'admin.sock')]);
    const repair = await cli(['repair', '--wait', '--admin', path.join(dir, 'admin.sock')]);
    t.is(repair.code, 0, repair.stdout + repair.stderr);
  } finally {
    t.is(await server.stop(), 0);
  }
  const status = await cli(['status', ...legs, '--json']);
  const report = JSON.parse(status.stdout) as { health: string; legs: Array<{ path: string; labelProblem: string | null }> };
  t.is(report.health, 'optimal', status.stdout);
  t.is(report.legs[1].path, remote.uri);
  t.is(report.legs[1].labelProblem, null, 'the remote label is read over NBD offline');
  const check = await cli(['check', ...legs]);
  t.is(check.code, 0, check.stderr);
  t.regex(check.stdout, /mismatch_cnt 0/);
  await remote.stop();
  const away = JSON.parse((await cli(['status', ...legs, '--json'])).stdout) as { health: string; legs: Array<{ labelProblem: string | null }> };
  t.is(away.health, 'degraded');
  t.regex(away.legs[1].labelProblem ?? '', /unreachable/);
});

test('create with a remote that is down creates nothing, says a remote export keeps its contents, and a retry succeeds', async (t) => {
  const dir = makeTempDir('remote-create');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const remote = await serveRemote(t, 'nbdkit', { sizeBytes: 17 * MiB });
  await remote.stop();
  const legs = ['--leg', path.join(dir, 'leg0.img'), remote.uri, '--log', path.join(dir, 'm.log'), '--size', '16MiB'];
  const down = await cli(['create', ...legs]);
  t.not(down.code, 0);
  t.regex(down.stderr, /nothing was created/);
  t.deepEqual(fs.readdirSync(dir), [], 'no leg file and no log left behind');
  await remote.restart();
  const retry = await cli(['create', ...legs]);
  t.is(retry.code, 0, retry.stderr);
  t.regex(retry.stdout, /a remote export keeps its old contents, so the first start syncs every region/);
  t.notRegex(retry.stdout, /block device/);
});
