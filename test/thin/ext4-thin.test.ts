import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { attachThroughFuse, verifyExt4 } from '../helpers/fuse-loop.js';
import { cliPath, startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, run, runOk } from '../helpers/tools.js';

/** Writes and fsyncs a file; false when the filesystem reports an error on the way. */
function writeDurably(file: string, content: Buffer): boolean {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, 'w');
    fs.writeSync(fd, content);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    const directory = fs.openSync(path.dirname(file), 'r');
    try {
      fs.fsyncSync(directory);
    } finally {
      fs.closeSync(directory);
    }
    return true;
  } catch {
    if (fd !== undefined) try { fs.closeSync(fd); } catch { /* the error is what we report */ }
    return false;
  }
}

test('ext4 on a thin mirror that runs out of space: write errors, no silent loss; after pool grow e2fsck is clean and fsynced files are intact', async (t) => {
  const dir = makeTempDir('ext4-thin-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const config = path.join(dir, 'config.yaml');
  fs.writeFileSync(config, `
listen: { tcp: "127.0.0.1:0", unix: null, admin: admin.sock }
storage:
  sizeBytes: 256MiB
  log: mirror.log
  sweepIntervalMs: 500
  legs:
    - path: leg0.thin
      thin: { poolSize: 40MiB }
    - path: leg1.thin
      thin: { poolSize: 40MiB }
cache: { size: 32MiB, dirtyLimit: 8MiB, writebackIntervalMs: 100, dirtyExpireMs: 500 }
`);
  const admin = path.join(dir, 'admin.sock');
  const mountPoint = path.join(dir, 'mnt');
  const synced = new Map<string, string>();
  let failures = 0;
  const server = await startServerProcess(['--config', config]);
  try {
    const attachment = await attachThroughFuse(server.uri(), path.join(dir, 'first'));
    try {
      await runOk('mkfs.ext4', ['-q', '-F', attachment.device], { timeoutMs: 120_000 });
      await attachment.mount(mountPoint);
      for (let index = 0; index < 120 && failures < 3; index += 1) {
        const content = crypto.randomBytes(1024 * 1024);
        const name = `file-${index}.bin`;
        if (writeDurably(path.join(mountPoint, name), content)) synced.set(name, crypto.createHash('sha256').update(content).digest('hex'));
        else failures += 1;
      }
      await run('umount', [mountPoint]);
    } finally {
      await attachment.detach();
    }
    t.log(`${synced.size} files fsynced before the pool ran out; ${failures} write or fsync failures seen by ext4`);
    t.true(failures > 0, 'the filesystem saw the out-of-space errors');
    t.true(synced.size > 5 && synced.size < 60);
    const full = JSON.parse((await runOk(process.execPath, [cliPath, 'status', '--admin', admin, '--json'])).stdout) as { health: string };
    t.not(full.health, 'failed');

    for (const slot of ['0', '1']) await runOk(process.execPath, [cliPath, 'pool', 'grow', slot, '--to', '256MiB', '--admin', admin]);
    // Mounting replays the journal; then the whole filesystem is checked read-only.
    await verifyExt4(t, server.uri(), path.join(dir, 'second'), mountPoint, synced);
    const check = (await runOk(process.execPath, [cliPath, 'check', '--admin', admin])).stdout;
    t.regex(check, /mismatch_cnt 0/);
  } finally {
    t.is(await server.stop(), 0);
  }
});
