import test, { type ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { cli } from '../helpers/cli.js';
import { serveRemote } from '../helpers/remote-exports.js';
import { startServerProcess } from '../helpers/server-process.js';
import { freePort, makeTempDir, readFileRange, run } from '../helpers/tools.js';
import { statusWhen } from '../helpers/wait.js';

const MiB = 1024 * 1024;
const sizeBytes = 32 * MiB;

interface Status { health: string; legs: Array<{ state: string }> }

function mirrorConfig(dir: string, legs: string[], extra = ''): string {
  const file = path.join(dir, 'config.yaml');
  fs.writeFileSync(file, `listen:\n  admin: admin.sock\nstorage:\n  sizeBytes: ${sizeBytes / MiB}MiB\n  regionSize: 1MiB\n  log: mirror.log\n` +
    `  legs:\n${legs.map((leg) => `    - path: "${leg}"\n      ${leg.startsWith('nbd') ? 'failfastMs: 1000' : ''}\n`).join('')}${extra}`);
  return file;
}


/** Two hosts' folders: host B exports its disk (nbdkit), and host A's mirror writes it as leg 1. */
async function primaryWithReplica(t: ExecutionContext, name: string) {
  const hostA = makeTempDir(`${name}-a`);
  const hostB = makeTempDir(`${name}-b`);
  t.teardown(() => {
    fs.rmSync(hostA, { recursive: true, force: true });
    fs.rmSync(hostB, { recursive: true, force: true });
  });
  const replicaFile = path.join(hostB, 'replica.img');
  const replica = await serveRemote(t, 'nbdkit', { sizeBytes: sizeBytes + MiB, file: replicaFile });
  const configA = mirrorConfig(hostA, ['leg0.img', replica.uri]);
  const primary = await startServerProcess(['-c', configA]);
  t.teardown(() => primary.kill());
  return { hostA, hostB, replicaFile, replica, configA, primary };
}

test('takeover: the primary is killed; the replica\'s host serves it alone with every flushed write, and the old primary\'s leg is refused, not merged', async (t) => {
  const { hostA, hostB, replicaFile, replica, primary } = await primaryWithReplica(t, 'takeover');
  const flushed = crypto.randomBytes(4 * MiB);
  fs.writeFileSync(path.join(hostA, 'flushed.bin'), flushed);
  // Flushed writes (qemu-io writes, then flushes) and FUA writes (nbdcopy's last flush) must survive the primary.
  const load = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x71 0 8M', '-c', 'flush', '-c', 'write -f -P 0x72 12M 1M', primary.uri()],
    { timeoutMs: 60_000 });
  t.is(load.code, 0, load.stderr);
  const copy = await run('nbdcopy', [path.join(hostA, 'flushed.bin'), `${primary.uri()}`, '--destination-is-zero', '--flush'], { timeoutMs: 60_000 });
  t.is(copy.code, 0, copy.stderr);
  await primary.kill();
  await replica.stop(true);

  // Host B: every slot listed, the lost primary's leg by its old URI (unreachable now).
  const lostPrimaryUri = `nbd://127.0.0.1:${await freePort()}/`;
  const configB = mirrorConfig(hostB, [lostPrimaryUri, replicaFile]);
  const takeover = await cli(['takeover', '-c', configB]);
  t.is(takeover.code, 0, takeover.stderr);
  t.regex(takeover.stdout, /leg 1 in sync/);
  t.regex(takeover.stdout, /leg 0: empty, unreachable/);
  const survivor = await startServerProcess(['-c', configB]);
  t.teardown(() => survivor.kill());
  try {
    const status = await statusWhen<Status>(path.join(hostB, 'admin.sock'), () => true, 1000, 100);
    t.is(status.health, 'degraded');
    const verify = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x71 4M 4M', '-c', 'read -P 0x72 12M 1M', survivor.uri()], { timeoutMs: 60_000 });
    t.is(verify.code, 0, `every acknowledged write is on the replica: ${verify.stdout}${verify.stderr}`);
    const read = await run('nbdcopy', [survivor.uri(), path.join(hostB, 'back.bin')], { timeoutMs: 60_000 });
    t.is(read.code, 0, read.stderr);
    t.true(readFileRange(path.join(hostB, 'back.bin'), 0, flushed.length).equals(flushed), 'the nbdcopy data with its final flush is there');
    t.is((await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x99 20M 1M', '-c', 'flush', survivor.uri()])).code, 0);

    // The old primary's disk returns, served where its leg was: taking it back is refused, never merged.
    // Exported as it is: a leg file ends with its label, and so does the export.
    const oldLeg = path.join(hostA, 'leg0.img');
    const oldPrimary = await serveRemote(t, 'nbdkit', { sizeBytes: fs.statSync(oldLeg).size, file: oldLeg });
    const reAdd = await cli(['re-add', '0', '--admin', path.join(hostB, 'admin.sock')]);
    t.not(reAdd.code, 0);
    t.regex(reAdd.stderr, /leg 0 is empty/);
    const replace = await cli(['replace', '0', oldPrimary.uri, '--admin', path.join(hostB, 'admin.sock')]);
    t.not(replace.code, 0);
    t.regex(replace.stderr, /already holds leg 0 of mirror .*refusing to take it over/);
    t.true(readFileRange(path.join(hostA, 'leg0.img'), 20 * MiB, MiB).every((byte) => byte === 0), 'the old primary\'s leg was not written');
    await oldPrimary.stop();

    // A new replica is seeded by replacing the empty slot with a fresh remote export, rebuilt online.
    const fresh = await serveRemote(t, 'qemu-nbd', { sizeBytes: sizeBytes + MiB, file: path.join(hostA, 'fresh.img') });
    const seeded = await cli(['replace', '0', fresh.uri, '--wait', '--admin', path.join(hostB, 'admin.sock')]);
    t.is(seeded.code, 0, seeded.stderr);
    t.regex((await cli(['check', '--admin', path.join(hostB, 'admin.sock')])).stdout, /mismatch_cnt 0/);
    const afterSeed = await statusWhen<Status>(path.join(hostB, 'admin.sock'), () => true, 1000, 100);
    t.is(afterSeed.health, 'optimal');
    t.true(readFileRange(path.join(hostA, 'fresh.img'), 20 * MiB, MiB).every((byte) => byte === 0x99), 'the new replica holds the survivor\'s data');
  } finally {
    t.is(await survivor.stop(), 0);
  }

  // The old primary restarts with its own log while the replica is reachable again: the replica moved on
  // (its label is newer than that log), so the old primary refuses to assemble rather than serve stale data over it.
  const replicaAgain = await serveRemote(t, 'nbdkit', { sizeBytes: sizeBytes + MiB, file: replicaFile });
  fs.writeFileSync(path.join(hostA, 'config.yaml'), fs.readFileSync(path.join(hostA, 'config.yaml'), 'utf8').replace(replica.uri, replicaAgain.uri));
  const restart = await cli(['serve', '-c', path.join(hostA, 'config.yaml')]);
  t.not(restart.code, 0);
  t.regex(restart.stderr, /leg 1 .* is newer than the region log.*Most likely another host took this leg over \(nbd-mirror takeover\).*split brain/);
  t.regex(restart.stderr, /Safe steps: after a takeover, keep serving the side that took over/);
  t.notRegex(restart.stderr, /Start with --force/, 'never the one wrong action as advice');
});

test('split brain: a remote leg that was taken over elsewhere and written there is refused when it reconnects', async (t) => {
  const { hostA, hostB, replicaFile, replica, configA, primary } = await primaryWithReplica(t, 'split');
  t.is((await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x10 0 1M', '-c', 'flush', primary.uri()])).code, 0);
  await primary.kill();
  await replica.stop(true);
  // Host B takes over and writes; host A's server, restarted meanwhile, runs degraded (the replica is away).
  const configB = mirrorConfig(hostB, [`nbd://127.0.0.1:${await freePort()}/`, replicaFile]);
  t.is((await cli(['takeover', '-c', configB])).code, 0);
  const survivor = await startServerProcess(['-c', configB]);
  t.teardown(() => survivor.kill());
  t.is((await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x20 0 1M', '-c', 'flush', survivor.uri()])).code, 0);
  t.is(await survivor.stop(), 0);
  const restarted = await startServerProcess(['-c', configA]);
  t.teardown(() => restarted.kill());
  await statusWhen<Status>(path.join(hostA, 'admin.sock'), (status) => status.legs[1].state === 'faulty', 5000, 100);
  // The replica is served again where leg 1 was: the reconnector finds a label newer than its log.
  await replica.restart();
  const deadline = Date.now() + 15_000;
  const refusedLine = (): Record<string, unknown> | undefined => restarted.logs.find((entry) => String(entry.msg).startsWith('remote leg answered but was refused'));
  while (Date.now() < deadline && !refusedLine()) await new Promise((resolve) => setTimeout(resolve, 100));
  t.regex(String(refusedLine()?.problem), /written elsewhere after it left this mirror.*split brain/);
  t.is((await statusWhen<Status>(path.join(hostA, 'admin.sock'), () => true, 1000, 100)).legs[1].state, 'faulty');
  t.true(readFileRange(replicaFile, 0, MiB).every((byte) => byte === 0x20), 'the taken-over side\'s write is intact');
  t.is(await restarted.stop(), 0);
});
