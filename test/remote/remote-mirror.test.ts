import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { cli } from '../helpers/cli.js';
import { legsIdentical } from '../helpers/mirror-fixture.js';
import { remoteServerKinds, serveRemote } from '../helpers/remote-exports.js';
import { startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, run, runOk } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const sizeBytes = 96 * MiB;

/** A mirror config with leg0 a local file and leg1 the remote export. */
function writeConfig(dir: string, remoteUri: string, extraLeg = ''): string {
  const file = path.join(dir, 'config.yaml');
  fs.writeFileSync(file, `listen:
  unix: nbd.sock
  admin: admin.sock
storage:
  sizeBytes: ${sizeBytes / MiB}MiB
  regionSize: 1MiB
  log: mirror.log
  legs:
    - path: leg0.img
    - path: "${remoteUri}"
${extraLeg}`);
  return file;
}

/** nbdfuse exposes the export as a file that mkfs.ext4 and e2fsck work on directly (no loop device needed). */
async function withFuseFile<T>(uri: string, dir: string, work: (file: string) => Promise<T>): Promise<T> {
  const fuseDir = path.join(dir, 'fuse');
  fs.mkdirSync(fuseDir, { recursive: true });
  const pidFile = path.join(dir, 'nbdfuse.pid');
  const child = spawn('nbdfuse', ['-P', pidFile, fuseDir, uri], { stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  for (let attempt = 0; attempt < 200 && !fs.existsSync(pidFile); attempt += 1) await new Promise((resolve) => setTimeout(resolve, 50));
  try {
    return await work(path.join(fuseDir, 'nbd'));
  } finally {
    await run('fusermount3', ['-u', fuseDir]);
    await exited;
  }
}

for (const kind of remoteServerKinds) {
  test(`a mirror with one leg served by ${kind}: mkfs and fsck through it, trim and zeroing alike on both legs, check finds 0 mismatches`, async (t) => {
    const dir = makeTempDir(`remote-mirror-${kind}`);
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    // The export holds the data and the leg's label after it.
    const remote = await serveRemote(t, kind, { sizeBytes: sizeBytes + MiB });
    // Garbage where the mirror's data will be: the first start must sync it from the local leg.
    fs.writeFileSync(remote.file, crypto.randomBytes(4 * MiB), { flag: 'r+' });
    const config = writeConfig(dir, remote.uri);
    const server = await startServerProcess(['-c', config]);
    const admin = path.join(dir, 'admin.sock');
    try {
      const created = server.logs.find((entry) => entry.msg === 'created a new mirror');
      t.is(created?.initialSync, true, 'an export that existed before is synced in full first');
      await withFuseFile(server.uri(), dir, async (file) => {
        await runOk('mkfs.ext4', ['-q', '-F', '-E', 'discard', file], { timeoutMs: 120_000 });
        const fsck = await run('e2fsck', ['-fn', file], { timeoutMs: 120_000 });
        t.is(fsck.code, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`);
      });
      // Data, then trim and both kinds of zeroing over parts of it, through qemu-io.
      const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 80M 8M', '-c', 'discard 81M 1M', '-c', 'write -z 83M 512k',
        '-c', 'write -z -u 84M 1M', '-c', 'write -P 0xcd 86M 4k', '-c', 'flush', server.uri()], { timeoutMs: 60_000 });
      t.is(io.code, 0, io.stderr);
      const check = (await cli(['check', '--admin', admin])).stdout;
      t.regex(check, /mismatch_cnt 0/, 'both legs agree on everything');
      const status = JSON.parse((await cli(['status', '--admin', admin, '--json'])).stdout) as { health: string; legs: Array<{ state: string; path: string }> };
      t.is(status.health, 'optimal');
      t.deepEqual(status.legs.map((leg) => leg.state), ['in_sync', 'in_sync']);
      t.is(status.legs[1].path, remote.uri);
    } finally {
      t.is(await server.stop(), 0);
    }
    const same = legsIdentical([path.join(dir, 'leg0.img'), remote.file], sizeBytes);
    t.true(same.identical, `the local leg and the remote export differ at ${same.firstDifference}`);
    // Discarded and zeroed ranges read back as zeroes on both (the spec leaves trimmed bytes to each server).
    const fd = fs.openSync(remote.file, 'r');
    const trimmed = Buffer.alloc(MiB);
    fs.readSync(fd, trimmed, 0, MiB, 81 * MiB);
    fs.closeSync(fd);
    t.true(trimmed.every((byte) => byte === 0));
  });
}
