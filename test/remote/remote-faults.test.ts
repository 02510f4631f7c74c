import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { cli } from '../helpers/cli.js';
import { startFaultProxy } from '../helpers/fault-proxy.js';
import { legsIdentical } from '../helpers/mirror-fixture.js';
import { serveRemote, writeRemoteMirrorConfig } from '../helpers/remote-exports.js';
import { startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, run } from '../helpers/tools.js';
import { statusWhen } from '../helpers/wait.js';

const MiB = 1024 * 1024;
const sizeBytes = 64 * MiB;
const failfastMs = 2000;

interface Status { health: string; legs: Array<{ state: string; remote: { link: string; attempts: number; problem: string | null } | null }>; regions: { bitsSet: number } }

function writeConfig(dir: string, remoteUri: string): string {
  return writeRemoteMirrorConfig(dir, remoteUri, { sizeBytes, failfastMs });
}

async function qemuIo(uri: string, commands: string[]): Promise<{ ms: number; code: number | null; stderr: string }> {
  const started = Date.now();
  const result = await run('qemu-io', ['-f', 'raw', ...commands.flatMap((command) => ['-c', command]), uri], { timeoutMs: 60_000 });
  return { ms: Date.now() - started, code: result.code, stderr: result.stderr };
}

async function setup(t: ExecutionContext) {
  const dir = makeTempDir('remote-faults');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const remote = await serveRemote(t, 'nbdkit', { sizeBytes: sizeBytes + MiB });
  const port = Number(new URL(remote.uri).port);
  const proxy = await startFaultProxy(t, { host: '127.0.0.1', port });
  const server = await startServerProcess(['-c', writeConfig(dir, `nbd://127.0.0.1:${proxy.port}/`), '--metrics', '127.0.0.1:0']);
  t.teardown(() => server.kill());
  const admin = path.join(dir, 'admin.sock');
  // Optimal: every leg in sync and no region left to resync (the first start syncs the export in full).
  const inSync = (): Promise<Status> => statusWhen<Status>(admin, (status) => status.health === 'optimal', 30_000, 100);
  t.is((await inSync()).health, 'optimal', 'the first sync of the remote leg finished');
  return { dir, remote, proxy, server, admin, inSync };
}

test('a link that goes silent fails the remote leg within the failfast time; when it heals the leg comes back by itself and only what changed is copied', async (t) => {
  const { dir, remote, proxy, server, admin, inSync } = await setup(t);
  t.is((await qemuIo(server.uri(), ['write -P 0x11 0 8M', 'flush'])).code, 0);
  // The sweeper clears what the first sync and this write set, so the bits left later are the outage's.
  t.is((await statusWhen<Status>(admin, (status) => status.regions.bitsSet === 0, 30_000, 100)).regions.bitsSet, 0);

  proxy.stall();
  const during = await qemuIo(server.uri(), ['write -P 0x22 16M 1M', 'flush']);
  t.is(during.code, 0, `the write succeeds on the local leg: ${during.stderr}`);
  t.true(during.ms < failfastMs + 4000, `the client waited ${during.ms} ms, not much past the failfast time`);
  const degraded = await statusWhen<Status>(admin, (status) => status.legs[1].state === 'faulty', 5000, 50);
  t.is(degraded.legs[1].state, 'faulty');
  t.is(degraded.health, 'degraded');
  t.is(degraded.legs[1].remote?.link, 'reconnecting');
  t.falsy(degraded.legs[0].remote, 'a local leg has no link');
  const meanwhile = await qemuIo(server.uri(), ['write -P 0x33 32M 2M', 'flush']);
  t.is(meanwhile.code, 0);
  t.true(meanwhile.ms < 3000, `writes while the leg is away do not wait for it (${meanwhile.ms} ms)`);

  proxy.heal();
  const back = await inSync();
  t.is(back.health, 'optimal');
  const reAdd = server.logs.find((entry) => entry.msg === 're-add: resyncing regions written while the leg was away');
  t.truthy(reAdd, 'the leg came back through a bitmap re-add');
  t.true((reAdd!.regions as number) >= 3 && (reAdd!.regions as number) <= 6,
    `only the regions written while it was away are copied (${String(reAdd!.regions)} of 64)`);
  t.true(server.logs.some((entry) => entry.msg?.toString().startsWith('remote leg is back')));
  const metricsPort = (server.logs.find((entry) => entry.msg === 'listening')?.metrics as { port: number }).port;
  const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  t.regex(metrics, /nbd_mirror_remote_leg_connected\{slot="1"\} 1/);
  t.regex(metrics, /nbd_mirror_remote_leg_reconnects_total\{slot="1"\} 1/);
  t.regex(metrics, /nbd_mirror_leg_failures_total 1/);
  const check = await cli(['check', '--admin', admin]);
  t.regex(check.stdout, /mismatch_cnt 0/, check.stderr);
  t.is(await server.stop(), 0);
  const same = legsIdentical([path.join(dir, 'leg0.img'), remote.file], sizeBytes);
  t.true(same.identical, `legs differ at ${same.firstDifference}`);
});

test('a cut link and a remote server killed and restarted: the leg is failed, then re-added when the server answers again', async (t) => {
  const { dir, remote, proxy, server, inSync } = await setup(t);
  proxy.cut();
  const cutWrite = await qemuIo(server.uri(), ['write -P 0x44 4M 1M', 'flush']);
  t.is(cutWrite.code, 0, cutWrite.stderr);
  t.true(cutWrite.ms < 3000, `a reset link fails at once, not after the failfast time (${cutWrite.ms} ms)`);
  proxy.heal();
  await inSync();

  await remote.stop(true);
  const killedWrite = await qemuIo(server.uri(), ['write -P 0x55 8M 1M', 'flush']);
  t.is(killedWrite.code, 0, killedWrite.stderr);
  await new Promise((resolve) => setTimeout(resolve, 1500));
  await remote.restart();
  await inSync();
  t.is(await server.stop(), 0);
  const same = legsIdentical([path.join(dir, 'leg0.img'), remote.file], sizeBytes);
  t.true(same.identical, `legs differ at ${same.firstDifference}`);
});

test('a remote that comes back wiped is refused and never written, with a message saying why', async (t) => {
  const { remote, server, admin } = await setup(t);
  await remote.stop(true);
  await qemuIo(server.uri(), ['write -P 0x66 0 1M', 'flush']);
  await statusWhen<Status>(admin, (status) => status.legs[1].state === 'faulty', 5000, 50);
  // Wiped: same size, all zeroes, so no label.
  fs.truncateSync(remote.file, 0);
  fs.truncateSync(remote.file, sizeBytes + MiB);
  await remote.restart();
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline && !server.logs.some((entry) => String(entry.msg).startsWith('remote leg answered but was refused'))) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const refusal = server.logs.find((entry) => String(entry.msg).startsWith('remote leg answered but was refused'));
  t.truthy(refusal);
  t.regex(String(refusal?.problem), /has no valid nbd-mirror label/);
  const status = JSON.parse((await cli(['status', '--admin', admin, '--json'])).stdout) as Status;
  t.is(status.legs[1].state, 'faulty');
  t.is(status.legs[1].remote?.link, 'refused');
  t.regex(status.legs[1].remote?.problem ?? '', /no valid nbd-mirror label/);
  t.regex((await cli(['status', '--admin', admin])).stdout, /remote link: refused after \d+ attempts?: leg 1/);
  t.is(await server.stop(), 0);
  const contents = fs.readFileSync(remote.file);
  t.true(contents.every((byte) => byte === 0), 'nothing was written to the wiped export');
});
