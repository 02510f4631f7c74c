import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { adminRequest } from '../../tools/admin-client.js';
import { attachThroughFuse, verifyExt4 } from '../helpers/fuse-loop.js';
import { startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, runOk } from '../helpers/tools.js';
import { statusWhen } from '../helpers/wait.js';

const sizeBytes = 256 * 1024 * 1024;
const regionSizeBytes = 1024 * 1024;

function writeDurably(file: string, content: Buffer): void {
  const fd = fs.openSync(file, 'w');
  fs.writeSync(fd, content);
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  const directory = fs.openSync(path.dirname(file), 'r');
  fs.fsyncSync(directory);
  fs.closeSync(directory);
}

test('kill -9 under ext4 with fsynced files: recovery resyncs only set-bit regions, legs identical, journal replays, fsck clean, fsynced files intact', async (t) => {
  const dir = makeTempDir('ext4-crash-');
  const admin = path.join(dir, 'admin.sock');
  const args = ['--leg', path.join(dir, 'leg0.img'), path.join(dir, 'leg1.img'), '--log', path.join(dir, 'mirror.log'),
    '--admin', admin, '--size', String(sizeBytes), '--sweep-interval-ms', '500', '--no-unix'];
  const mountPoint = path.join(dir, 'mnt');
  const expected = new Map<string, string>();
  let server = await startServerProcess(args);
  const attachment = await attachThroughFuse(server.uri(), path.join(dir, 'first'));
  try {
    await runOk('mkfs.ext4', ['-q', '-F', attachment.device], { timeoutMs: 120_000 });
    await attachment.mount(mountPoint);
    // mkfs discards the whole device, dirtying every region; let the sweeper clear them before the workload.
    await statusWhen<{ regions: { bitsSet: number } }>(admin, (quiet) => quiet.regions.bitsSet < 16, 10_000, 100);
    for (let index = 0; index < 30; index += 1) {
      const content = crypto.randomBytes(4096 * (1 + ((index * 53) % 200)));
      const name = `synced-${index}.bin`;
      writeDurably(path.join(mountPoint, name), content);
      expected.set(name, crypto.createHash('sha256').update(content).digest('hex'));
    }
    // Unsynced work in flight when the plug is pulled.
    for (let index = 0; index < 10; index += 1) fs.writeFileSync(path.join(mountPoint, `unsynced-${index}.bin`), crypto.randomBytes(256 * 1024));
    await server.kill();
  } finally {
    await attachment.detach();
  }
  server = await startServerProcess(args);
  try {
    const recoveryRegions = server.logs.find((entry) => entry.msg === 'listening')?.recoveryRegions as number;
    const status = await adminRequest(admin, { command: 'wait-resync' }) as { regions: { outOfSync: number } };
    t.is(status.regions.outOfSync, 0);
    t.log(`recovery resynced ${recoveryRegions} of ${sizeBytes / regionSizeBytes} regions (only those with set bits)`);
    t.true(recoveryRegions > 0 && recoveryRegions < sizeBytes / regionSizeBytes);
    const check = await adminRequest(admin, { command: 'check' }) as { mismatchedRegions: number[] };
    t.deepEqual(check.mismatchedRegions, [], 'legs identical after recovery');

    // Mounting replays the journal.
    await verifyExt4(t, server.uri(), path.join(dir, 'second'), mountPoint, expected);
  } finally {
    t.is(await server.stop(), 0);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
