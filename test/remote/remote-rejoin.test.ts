import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { cli } from '../helpers/cli.js';
import { startFaultProxy } from '../helpers/fault-proxy.js';
import { legsIdentical } from '../helpers/mirror-fixture.js';
import { type RemoteExport, serveRemote, writeRemoteMirrorConfig } from '../helpers/remote-exports.js';
import { type ServerProcess, startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, run } from '../helpers/tools.js';
import { statusWhen, waitUntil } from '../helpers/wait.js';

/**
 * A remote leg that is faulty in the log comes back by itself after a
 * restart, however it got there; one the operator failed stays out, across
 * restarts; and a remote that dies while the mirror is idle is noticed
 * without waiting for the next write. Each drives the real CLI and server.
 */
const MiB = 1024 * 1024;
const sizeBytes = 32 * MiB;
const failfastMs = 2000;

interface Status {
  health: string;
  legs: Array<{ state: string; remote: { link: string; attempts: number; problem: string | null; connections: number } | null }>;
  regions: { bitsSet: number };
}

interface Rig {
  dir: string;
  admin: string;
  config: string;
  remote: RemoteExport;
  start(): Promise<ServerProcess>;
}

async function rig(t: ExecutionContext, remoteUri?: (remote: RemoteExport) => Promise<string>): Promise<Rig> {
  const dir = makeTempDir('remote-rejoin');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const remote = await serveRemote(t, 'nbdkit', { sizeBytes: sizeBytes + MiB });
  const uri = remoteUri ? await remoteUri(remote) : remote.uri;
  const config = writeRemoteMirrorConfig(dir, uri, { sizeBytes, failfastMs, extra: 'cache:\n  enabled: false\n' });
  const servers: ServerProcess[] = [];
  t.teardown(async () => {
    for (const server of servers) await server.kill();
  });
  return {
    dir, admin: path.join(dir, 'admin.sock'), config, remote,
    start: async () => {
      const server = await startServerProcess(['-c', config, '--metrics', '127.0.0.1:0']);
      servers.push(server);
      return server;
    },
  };
}

const optimal = (admin: string): Promise<Status> => statusWhen<Status>(admin, (status) => status.health === 'optimal', 30_000, 100);
/** Optimal, and the sweeper has cleared the first sync's bits: bits set later are what the leg misses while away. */
const settled = (admin: string): Promise<Status> =>
  statusWhen<Status>(admin, (status) => status.health === 'optimal' && status.regions.bitsSet === 0, 30_000, 100);

async function write(server: ServerProcess, pattern: number, offsetMiB: number): Promise<void> {
  const result = await run('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${offsetMiB}M 1M`, '-c', 'flush', server.uri()], { timeoutMs: 60_000 });
  if (result.code !== 0) throw new Error(`qemu-io write at ${offsetMiB} MiB: ${result.stderr}`);
}

async function metric(server: ServerProcess, line: RegExp): Promise<string | undefined> {
  const port = (server.logs.find((entry) => entry.msg === 'listening')?.metrics as { port: number }).port;
  return line.exec(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text())?.[0];
}

/** After the leg rejoined by itself: only the set bits were copied, the legs agree, and the files are identical. */
async function rejoinedByItself(t: ExecutionContext, r: Rig, server: ServerProcess, regionsAtMost: number): Promise<void> {
  const back = await optimal(r.admin);
  t.is(back.health, 'optimal', `the leg did not come back by itself: ${JSON.stringify(back.legs[1])}`);
  const reAdd = server.logs.find((entry) => entry.msg === 're-add: resyncing regions written while the leg was away');
  t.truthy(reAdd, 'a bitmap re-add, not a full rebuild');
  t.true((reAdd!.regions as number) <= regionsAtMost, `only set bits copied (${String(reAdd!.regions)} regions)`);
  t.true(server.logs.some((entry) => String(entry.msg).startsWith('remote leg is back')));
  const check = await cli(['check', '--admin', r.admin]);
  t.regex(check.stdout, /mismatch_cnt 0/, check.stderr);
  t.is(await server.stop(), 0);
  const same = legsIdentical([path.join(r.dir, 'leg0.img'), r.remote.file], sizeBytes);
  t.true(same.identical, `legs differ at ${same.firstDifference}`);
}

test('a leg failed before a clean stop, restarted while the remote is down, rejoins by itself when it returns', async (t) => {
  const r = await rig(t);
  let server = await r.start();
  await settled(r.admin);
  await r.remote.stop();
  await write(server, 0x11, 3);
  t.is((await statusWhen<Status>(r.admin, (status) => status.legs[1].state === 'faulty', 10_000, 50)).legs[1].state, 'faulty');
  t.is(await server.stop(), 0);

  server = await r.start();
  t.true(server.logs.some((entry) => entry.msg === 'leg is faulty in the log: not used until re-add or replace'));
  const away = await statusWhen<Status>(r.admin, (status) => (status.legs[1].remote?.attempts ?? 0) >= 2, 10_000, 100);
  t.like(away.legs[1].remote, { link: 'reconnecting' }, 'watched from start');
  t.true(away.legs[1].remote!.attempts >= 2, `attempts counted: ${JSON.stringify(away.legs[1].remote)}`);
  t.truthy(away.legs[1].remote!.problem, 'with the last problem');
  const human = await cli(['status', '--admin', r.admin]);
  t.regex(human.stdout, /remote link: reconnecting after \d+ attempts: /);
  await write(server, 0x22, 7);
  await r.remote.restart();
  await rejoinedByItself(t, r, server, 4);
});

test('kill -9 of the mirror after the leg failed, the remote back before the restart: the leg rejoins by itself', async (t) => {
  const r = await rig(t);
  let server = await r.start();
  await settled(r.admin);
  await r.remote.stop(true);
  await write(server, 0x33, 5);
  await statusWhen<Status>(r.admin, (status) => status.legs[1].state === 'faulty', 10_000, 50);
  await server.kill();
  await r.remote.restart();
  server = await r.start();
  await rejoinedByItself(t, r, server, 8);
});

test('mirror and remote stopped at once (the shutdown marks the leg faulty), both started again: the leg rejoins by itself', async (t) => {
  const r = await rig(t);
  let server = await r.start();
  await settled(r.admin);
  await write(server, 0x44, 2);
  await Promise.all([server.stop(), r.remote.stop()]);
  await r.remote.restart();
  server = await r.start();
  await rejoinedByItself(t, r, server, sizeBytes / MiB);
});

test('a remote leg the operator failed stays out across a restart, status says held, and re-add brings it back', async (t) => {
  const r = await rig(t);
  let server = await r.start();
  await settled(r.admin);
  const failed = await cli(['fail', '1', '--admin', r.admin]);
  t.is(failed.code, 0, failed.stderr);
  await write(server, 0x55, 9);
  t.is(await server.stop(), 0);

  server = await r.start();
  await new Promise((resolve) => setTimeout(resolve, 2000));
  const held = await statusWhen<Status>(r.admin, () => true, 0, 100);
  t.is(held.legs[1].state, 'faulty', 'not reconnected although the remote answers');
  t.like(held.legs[1].remote, { link: 'held', attempts: 0 });
  t.false(server.logs.some((entry) => String(entry.msg).startsWith('remote leg is back')));
  const human = await cli(['status', '--admin', r.admin]);
  t.regex(human.stdout, /remote link: held/);
  const reAdd = await cli(['re-add', '1', '--admin', r.admin]);
  t.is(reAdd.code, 0, reAdd.stderr);
  t.is((await optimal(r.admin)).health, 'optimal');
  t.is(await server.stop(), 0);
  const same = legsIdentical([path.join(r.dir, 'leg0.img'), r.remote.file], sizeBytes);
  t.true(same.identical, `legs differ at ${same.firstDifference}`);
});

test('fail on a remote leg already away holds it: the reconnects stop, across a restart too', async (t) => {
  const r = await rig(t);
  let server = await r.start();
  await settled(r.admin);
  await r.remote.stop();
  await statusWhen<Status>(r.admin, (status) => status.legs[1].remote?.link === 'reconnecting', 10_000, 50);
  const failed = await cli(['fail', '1', '--admin', r.admin]);
  t.is(failed.code, 0, failed.stderr);
  t.regex(failed.stdout, /now held/);
  await r.remote.restart();
  t.is(await server.stop(), 0);
  server = await r.start();
  await new Promise((resolve) => setTimeout(resolve, 2000));
  const held = await statusWhen<Status>(r.admin, () => true, 0, 100);
  t.like(held.legs[1], { state: 'faulty', remote: { link: 'held' } });
});

test('a remote killed while the mirror is idle is seen at once: faulty in status and metrics, then back by itself', async (t) => {
  const r = await rig(t);
  const server = await r.start();
  await settled(r.admin);
  t.is(await metric(server, /nbd_mirror_remote_leg_connected\{slot="1"\} \d/), 'nbd_mirror_remote_leg_connected{slot="1"} 1');
  t.regex((await cli(['status', '--admin', r.admin])).stdout, /leg 1: in_sync nbd:.*\n\s+remote link: connected \(1 connection\)/,
    'a healthy link is shown too, not only in --json');
  const killedAt = Date.now();
  await r.remote.stop(true);
  const away = await statusWhen<Status>(r.admin, (status) => status.legs[1].state === 'faulty', 5000, 20);
  t.is(away.legs[1].state, 'faulty', 'no write was needed to notice');
  t.true(Date.now() - killedAt < 1500, `noticed in ${Date.now() - killedAt} ms`);
  t.is(away.health, 'degraded');
  t.is(await metric(server, /nbd_mirror_remote_leg_connected\{slot="1"\} \d/), 'nbd_mirror_remote_leg_connected{slot="1"} 0');
  t.true(server.logs.some((entry) => entry.msg === 'leg failed: marked faulty, mirror continues degraded' && /connection was lost/.test(String(entry.err))));
  await r.remote.restart();
  await rejoinedByItself(t, r, server, 0);
});

test('a link that goes silent while the mirror is idle is caught by the idle probe within the failfast time', async (t) => {
  let proxyPort = 0;
  let stall = (): void => undefined;
  const r = await rig(t, async (remote) => {
    const proxy = await startFaultProxy(t, { host: '127.0.0.1', port: Number(new URL(remote.uri).port) });
    proxyPort = proxy.port;
    stall = () => proxy.stall();
    return `nbd://127.0.0.1:${proxyPort}/`;
  });
  const server = await r.start();
  await settled(r.admin);
  const stalledAt = Date.now();
  stall();
  const away = await statusWhen<Status>(r.admin, (status) => status.legs[1].state === 'faulty', failfastMs * 3, 50);
  const tookMs = Date.now() - stalledAt;
  t.is(away.legs[1].state, 'faulty', 'a silent link is noticed without a write');
  t.true(tookMs <= failfastMs + 700, `noticed in ${tookMs} ms (failfast ${failfastMs} ms)`);
  // The log line comes through the server's stdout, which can trail the admin socket's answer on a busy machine.
  t.true(await waitUntil(() => server.logs.some((entry) => /idle probe/.test(String(entry.err))), 5000, 20),
    `by the idle probe: ${JSON.stringify(server.logs.filter((entry) => entry.err !== undefined))}`);
});

test('the link cut while the start stamps the remote leg\'s label: the server starts degraded, and the leg rejoins when the link heals', async (t) => {
  let proxy: Awaited<ReturnType<typeof startFaultProxy>> | undefined;
  const r = await rig(t, async (remote) => {
    proxy = await startFaultProxy(t, { host: '127.0.0.1', port: Number(new URL(remote.uri).port) });
    return `nbd://127.0.0.1:${proxy.port}/`;
  });
  let server = await r.start();
  await settled(r.admin);
  t.is(await server.stop(), 0);
  // The first write a restart sends the remote is the label stamp with the new events value.
  proxy!.cutAtNextWrite();
  server = await r.start();
  t.true(server.logs.some((entry) => entry.msg === 'remote leg lost while its label was stamped at start: marked faulty, starting degraded'),
    'the start went on without the leg');
  t.is((await statusWhen<Status>(r.admin, () => true, 0, 100)).health, 'degraded');
  await write(server, 0x66, 11);
  proxy!.heal();
  await rejoinedByItself(t, r, server, 4);
});
