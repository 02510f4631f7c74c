import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { projectRoot, startServerProcess } from '../helpers/server-process.js';
import { detachLoopDevices, makeLoopDevice } from '../helpers/loop-device.js';
import { makeTempDir, run } from '../helpers/tools.js';

const script = path.join(projectRoot, 'test', 'python', 'commands.py');

for (const mode of ['off', 'on'] as const) {
  test(`libnbd drives every command and flag with structured replies ${mode}`, async (t) => {
    const dir = makeTempDir(`libnbd-${mode}`);
    const server = await startServerProcess(['--leg', path.join(dir, 'leg.img'), '--size', '256MiB', '--no-unix']);
    try {
      const result = await run('/usr/bin/python3', [script, server.uri(), mode], { timeoutMs: 120_000 });
      t.is(result.code, 0, `${result.stdout}\n${result.stderr}`);
      t.regex(result.stdout, /^ok$/m);
    } finally {
      t.is(await server.stop(), 0, 'server exits cleanly on SIGTERM');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('without the cache (large reads of the leg go out by sendfile) every command still behaves', async (t) => {
  const dir = makeTempDir('libnbd-no-cache');
  // sendfile replies are off by default (copied reads are faster now); this turns them on for reads of 128 KiB or more.
  const config = path.join(dir, 'config.yaml');
  fs.writeFileSync(config, 'limits: { sendfileReplyBytes: 128KiB }\nstorage: { legs: [ { path: unused.img } ] }\n');
  const server = await startServerProcess(['--config', config, '--leg', path.join(dir, 'leg.img'), '--size', '256MiB', '--no-unix',
    '--no-cache']);
  try {
    for (const mode of ['off', 'on']) {
      const result = await run('/usr/bin/python3', [script, server.uri(), mode], { timeoutMs: 120_000 });
      t.is(result.code, 0, `${mode}: ${result.stdout}\n${result.stderr}`);
      t.regex(result.stdout, /^ok$/m);
    }
  } finally {
    t.is(await server.stop(), 0);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a block-device leg (a loop device) behaves for every command: reads of any size, block status, zeroing', async (t) => {
  const dir = makeTempDir('libnbd-blockdev');
  const loop = await makeLoopDevice(dir, 'backing', 256 * 1024 ** 2);
  try {
    // --no-cache: every read reaches the device's own read and block-status paths.
    for (const cache of ['--cache', '--no-cache']) {
      const server = await startServerProcess(['--leg', loop, '--no-unix', cache]);
      try {
        for (const mode of ['off', 'on']) {
          const result = await run('/usr/bin/python3', [script, server.uri(), mode, 'blockdev'], { timeoutMs: 120_000 });
          t.is(result.code, 0, `${cache} ${mode}: ${result.stdout}\n${result.stderr}`);
        }
      } finally {
        t.is(await server.stop(), 0);
      }
    }
  } finally {
    await detachLoopDevices([loop]);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('without the native addon (portable fallbacks) every command still behaves', async (t) => {
  const dir = makeTempDir('libnbd-portable');
  const server = await startServerProcess(['--leg', path.join(dir, 'leg.img'), '--size', '256MiB', '--no-unix'],
    { env: { NBD_MIRROR_NO_NATIVE: '1' } });
  try {
    t.true(server.logs.some((entry) => entry.msg === 'file not locked: nothing stops a second server or a tool from writing it meanwhile' &&
      entry.path === path.join(dir, 'leg.img')), 'running unlocked is said, not silent');
    for (const mode of ['off', 'on']) {
      const result = await run('/usr/bin/python3', [script, server.uri(), mode, 'portable'], { timeoutMs: 120_000 });
      t.is(result.code, 0, `${mode}: ${result.stdout}\n${result.stderr}`);
    }
  } finally {
    t.is(await server.stop(), 0);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
