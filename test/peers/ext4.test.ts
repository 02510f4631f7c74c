import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { attachThroughFuse } from '../helpers/fuse-loop.js';
import { startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, run, runOk } from '../helpers/tools.js';

test('ext4 on the export through nbdfuse and a loop device: mkfs, files, fsck, remount, verify', async (t) => {
  const dir = makeTempDir('ext4');
  const server = await startServerProcess(['--leg', path.join(dir, 'leg.img'), '--size', '256MiB', '--no-unix']);
  const attachment = await attachThroughFuse(server.uri(), dir);
  const mountPoint = path.join(dir, 'mnt');
  try {
    await runOk('mkfs.ext4', ['-q', '-F', attachment.device], { timeoutMs: 120_000 });
    await attachment.mount(mountPoint);
    const expected = new Map<string, string>();
    for (let i = 0; i < 40; i += 1) {
      const content = crypto.randomBytes(1024 * (1 + ((i * 37) % 700)));
      const name = `file-${i}.bin`;
      fs.writeFileSync(path.join(mountPoint, name), content);
      expected.set(name, crypto.createHash('sha256').update(content).digest('hex'));
    }
    fs.mkdirSync(path.join(mountPoint, 'dir'));
    fs.writeFileSync(path.join(mountPoint, 'dir', 'text.txt'), 'hello through the kernel\n'.repeat(1000));
    await runOk('sync', []);
    await run('fstrim', ['-v', mountPoint]);
    await attachment.unmount(mountPoint);

    const fsck = await run('e2fsck', ['-fn', attachment.device], { timeoutMs: 120_000 });
    t.is(fsck.code, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`);

    await attachment.mount(mountPoint, ['-o', 'ro']);
    for (const [name, digest] of expected) {
      const actual = crypto.createHash('sha256').update(fs.readFileSync(path.join(mountPoint, name))).digest('hex');
      t.is(actual, digest, `${name} intact after remount`);
    }
    t.is(fs.readFileSync(path.join(mountPoint, 'dir', 'text.txt'), 'utf8').length, 25_000);
    await attachment.unmount(mountPoint);
  } finally {
    await attachment.detach();
    t.is(await server.stop(), 0);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
