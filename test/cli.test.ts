import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { RawClient } from './helpers/raw-client.js';
import { cliPath, startServerProcess } from './helpers/server-process.js';
import { makeTempDir, run, runOk } from './helpers/tools.js';

async function serveFails(args: string[], cwd?: string): Promise<string> {
  const result = await run(process.execPath, [cliPath, 'serve', ...args], { timeoutMs: 20_000, cwd });
  if (result.code === 0) throw new Error('serve should have failed');
  return result.stderr;
}

test('the embedded default creates its config, a two-leg mirror and sockets on first start and serves them', async (t) => {
  const dir = makeTempDir('default');
  const dataDir = path.join(dir, 'data');
  const server = await startServerProcess(['--data-dir', dataDir]);
  try {
    t.true(fs.existsSync(path.join(dataDir, 'config.yaml')));
    // Each leg holds the data plus its 8 KiB label at the end.
    t.is(fs.statSync(path.join(dataDir, 'leg0.img')).size, 1024 ** 3 + 8192);
    t.is(fs.statSync(path.join(dataDir, 'leg1.img')).size, 1024 ** 3 + 8192);
    t.true(fs.existsSync(path.join(dataDir, 'mirror.log')));
    t.true(fs.statSync(path.join(dataDir, 'nbd.sock')).isSocket());
    t.true(fs.statSync(path.join(dataDir, 'admin.sock')).isSocket());
    const status = await run(process.execPath, [cliPath, 'status', '--data-dir', dataDir]);
    t.regex(status.stdout, /health: optimal/);
    const info = await runOk('nbdinfo', ['--size', `nbd+unix:///disk?socket=${path.join(dataDir, 'nbd.sock')}`]);
    t.is(info.stdout.trim(), String(1024 ** 3));
    t.true(server.logs.some((entry) => String(entry.msg).startsWith('attach with: nbdinfo')), 'prints how to attach');
  } finally {
    t.is(await server.stop(), 0);
  }
  t.false(fs.existsSync(path.join(dataDir, 'nbd.sock')), 'the socket is removed on shutdown');
  const again = await startServerProcess(['--data-dir', dataDir]);
  t.is(again.logs.find((entry) => entry.msg === 'listening')?.recoveryRegions, 0, 'a clean shutdown leaves nothing to resync');
  t.is(await again.stop(), 0, 'a second start reuses what the first created');
  fs.rmSync(dir, { recursive: true, force: true });
});

test('legs named on the command line create no data folder and take none of the configured sockets', async (t) => {
  const dir = makeTempDir('adhoc');
  const adhoc = await startServerProcess(['--leg', 'adhoc.img', '--size', '64MiB'], { cwd: dir });
  try {
    const listening = adhoc.logs.find((entry) => entry.msg === 'listening');
    t.is(listening?.config, '(built-in defaults)');
    t.is(listening?.unix, undefined, 'no unix socket unless --unix names one');
    t.is(fs.statSync(path.join(dir, 'adhoc.img')).size, 64 * 1024 ** 2);
    t.false(fs.existsSync(path.join(dir, 'data')), 'nothing is written for the embedded default');
  } finally {
    t.is(await adhoc.stop(), 0);
  }
  // With the embedded default's folder in place, --leg still leaves its sockets to the configured server.
  const configured = await startServerProcess(['--data-dir', path.join(dir, 'data'), '--size', '64MiB'], { cwd: dir });
  const second = await startServerProcess(['--leg', 'adhoc.img'], { cwd: dir });
  try {
    t.is(second.logs.find((entry) => entry.msg === 'listening')?.unix, undefined);
    const info = await runOk('nbdinfo', ['--size', `nbd+unix:///disk?socket=${path.join(dir, 'data', 'nbd.sock')}`]);
    t.is(info.stdout.trim(), String(64 * 1024 ** 2));
  } finally {
    t.is(await second.stop(), 0);
    t.is(await configured.stop(), 0);
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a unix socket a live server answers on is refused, not taken over; a dead server\'s socket file is replaced', async (t) => {
  const dir = makeTempDir('socket');
  const socket = path.join(dir, 'nbd.sock');
  const first = await startServerProcess(['--leg', path.join(dir, 'a.img'), '--size', '64MiB', '--unix', socket]);
  try {
    t.regex(await serveFails(['--listen', '127.0.0.1:0', '--leg', path.join(dir, 'b.img'), '--size', '32MiB', '--unix', socket]),
      /unix socket .*nbd\.sock is in use by another server \(it accepts connections\)/);
    const info = await runOk('nbdinfo', ['--size', `nbd+unix:///disk?socket=${socket}`]);
    t.is(info.stdout.trim(), String(64 * 1024 ** 2), 'the socket still reaches the first server');
  } finally {
    await first.kill();
  }
  t.true(fs.statSync(socket).isSocket(), 'kill -9 leaves the socket file behind');
  const second = await startServerProcess(['--leg', path.join(dir, 'b.img'), '--size', '32MiB', '--unix', socket]);
  try {
    const info = await runOk('nbdinfo', ['--size', `nbd+unix:///disk?socket=${socket}`]);
    t.is(info.stdout.trim(), String(32 * 1024 ** 2), 'a leftover socket file is replaced');
  } finally {
    t.is(await second.stop(), 0);
  }
  fs.writeFileSync(socket, 'not a socket');
  t.regex(await serveFails(['--listen', '127.0.0.1:0', '--leg', path.join(dir, 'b.img'), '--unix', socket]),
    /unix socket .*nbd\.sock exists and is not a socket; it is not replaced/);
  t.is(fs.readFileSync(socket, 'utf8'), 'not a socket');
  fs.rmSync(dir, { recursive: true, force: true });
});

test('malformed configuration is refused with the key and the problem', async (t) => {
  const dir = makeTempDir('config');
  const write = (name: string, text: string): string => {
    const file = path.join(dir, name);
    fs.writeFileSync(file, text);
    return file;
  };
  const cases: Array<[string, RegExp]> = [
    ['storage:\n  legs:\n    - path: a.img\n  sizeBites: 1GiB\n', /storage\.sizeBites: unknown key/],
    ['storage:\n  sizeBytes: lots\n  legs:\n    - path: a.img\n', /storage\.sizeBytes: "lots" is not a size/],
    ['storage:\n  legs: []\n', /storage\.legs: needs at least one leg/],
    ['storage:\n  legs:\n    - {}\n', /storage\.legs\[0\]\.path: is required/],
    ['listen:\n  tcp: localhost\nstorage:\n  legs:\n    - path: a.img\n', /listen\.tcp: "localhost" is not "host:port"/],
    ['limits:\n  maxConnections: 0\nstorage:\n  legs:\n    - path: a.img\n', /limits\.maxConnections: 0 is outside 1\.\.65536/],
    ['limits:\n  pollMaxMicroseconds: 20000\nstorage:\n  legs:\n    - path: a.img\n', /limits\.pollMaxMicroseconds: 20000 is outside 0\.\.10000/],
    ['storage: [oops\n', /line \d+, column \d+: invalid YAML/],
    ['log:\n  level: loud\nstorage:\n  legs:\n    - path: a.img\n', /log\.level: must be one of/],
    ['storage:\n  legs:\n    - path: a.img\n      thin: {}\n', /storage\.legs\[0\]\.thin\.poolSize: is required/],
    ['storage:\n  legs:\n    - path: a.img\n      thin: { poolSize: 1MiB, chunkSize: 3000 }\n', /thin\.chunkSize: 3000 must be a power of two/],
    ['storage:\n  legs:\n    - path: a.img\ncache: { size: 64MiB, dirtyLimit: 1GiB }\n', /cache\.dirtyLimit: 1073741824 exceeds cache\.size/],
    ['storage:\n  legs:\n    - path: a.img\ncache: { noSpacePolicy: wait }\n', /cache\.noSpacePolicy: must be error .* or queue/],
    ['storage:\n  legs:\n    - path: a.img\ncache: { writeAroundSize: -1 }\n', /cache\.writeAroundSize: size -1 must be a positive integer/],
    ['storage:\n  legs:\n    - path: a.img\nlimits: { sendfileReplyBytes: lots }\n', /limits\.sendfileReplyBytes: "lots" is not a size/],
    ['storage:\n  legs:\n    - path: a.img\ncache: { dirtyLimt: 1GiB }\n', /cache\.dirtyLimt: unknown key/],
    ['storage:\n  legs:\n    - path: a.img\n      powerCut: { policy: maybe }\n', /storage\.legs\[0\]\.powerCut\.policy: must be one of keep, drop, torn/],
    ['storage:\n  legs:\n    - path: a.img\n      powerCut: { sectorBytes: 1000 }\n', /storage\.legs\[0\]\.powerCut\.sectorBytes: must be a power of two from 512 to 65536/],
    ['storage:\n  log: { path: m.log, powerCutt: {} }\n  legs:\n    - path: a.img\n    - path: b.img\n', /storage\.log\.powerCutt: unknown key/],
    ['storage:\n  log: { path: m.log, writeLog: "" }\n  legs:\n    - path: a.img\n    - path: b.img\n', /storage\.log\.writeLog: must be a non-empty string/],
    ['storage:\n  legs:\n    - path: a.img\ncrash: { point: sweeper.nowhere@2 }\n', /crash\.point: "sweeper\.nowhere@2" is not point/],
    ['storage:\n  legs:\n    - path: a.img\n      faults: { ignoreDurability: sometimes }\n', /storage\.legs\[0\]\.faults\.ignoreDurability: must be true or false/],
  ];
  for (const [index, [text, expected]] of cases.entries()) {
    const file = write(`bad-${index}.yaml`, text);
    const stderr = await serveFails(['--config', file]);
    t.regex(stderr, expected, text);
    t.true(stderr.includes(file), 'the message names the file');
  }
  t.regex(await serveFails(['--config', path.join(dir, 'missing.yaml')]), /cannot read/);
  t.regex(await serveFails(['--data-dir', path.join(dir, 'd'), '--max-connections', 'many']), /--max-connections: "many" is not an integer/);
  t.regex(await serveFails(['--data-dir', path.join(dir, 'd'), '--poll-max-us', '-5']), /command line: --poll-max-us: -5 is outside 0\.\.10000/);
  t.false(fs.existsSync(path.join(dir, 'a.img')), 'nothing is created when the configuration is refused');
  t.false(fs.existsSync(path.join(dir, 'd')), 'nor the embedded default\'s folder when a flag is refused');
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a read-only export refuses writes with EPERM and advertises READ_ONLY', async (t) => {
  const dir = makeTempDir('readonly');
  const leg = path.join(dir, 'leg.img');
  fs.writeFileSync(leg, crypto.randomBytes(1024 * 1024));
  const before = fs.readFileSync(leg);
  const server = await startServerProcess(['--leg', leg, '--read-only', '--no-unix']);
  try {
    const info = await runOk('nbdinfo', ['--json', server.uri()]);
    t.true((JSON.parse(info.stdout) as { exports: Array<{ is_read_only: boolean }> }).exports[0].is_read_only);
    const client = await RawClient.connect(server.port);
    await client.greet();
    const { flags } = await client.go();
    t.truthy(flags & 2, 'READ_ONLY flag');
    await client.request(1, { cookie: 5n, offset: 0n, payload: Buffer.alloc(4096) });
    t.deepEqual(await client.readSimpleReply(), { error: 1, cookie: 5n }, 'EPERM');
    await client.request(4, { cookie: 6n, offset: 0n, length: 4096 });
    t.deepEqual(await client.readSimpleReply(), { error: 1, cookie: 6n }, 'trim is refused too');
    await client.request(0, { cookie: 7n, offset: 0n, length: 4096 });
    t.deepEqual(await client.readSimpleReply(), { error: 0, cookie: 7n });
    t.true((await client.read(4096)).equals(before.subarray(0, 4096)));
    client.destroy();
  } finally {
    t.is(await server.stop(), 0);
  }
  t.true(fs.readFileSync(leg).equals(before), 'the leg is untouched');
  fs.rmSync(dir, { recursive: true, force: true });
});

test('SIGTERM finishes in-flight requests, flushes, and exits 0; acknowledged data is on the leg', async (t) => {
  const dir = makeTempDir('sigterm');
  const leg = path.join(dir, 'leg.img');
  const server = await startServerProcess(['--leg', leg, '--size', '64MiB', '--no-unix']);
  const client = await RawClient.connect(server.port);
  await client.greet();
  await client.go();
  const blocks = Array.from({ length: 64 }, () => crypto.randomBytes(65536));
  await Promise.all(blocks.map((block, i) => client.request(1, { cookie: BigInt(i), offset: BigInt(i * 65536), payload: block })));
  const exitCode = server.stop();
  const acknowledged = new Set<number>();
  for (let i = 0; i < blocks.length; i += 1) {
    try {
      const reply = await client.readSimpleReply();
      if (reply.error === 0) acknowledged.add(Number(reply.cookie));
    } catch {
      break;
    }
  }
  t.is(await exitCode, 0);
  t.true(server.logs.some((entry) => entry.msg === 'stopped cleanly'));
  t.true(acknowledged.size > 0, 'requests already received were answered');
  const onDisk = fs.readFileSync(leg);
  for (const i of acknowledged) t.true(onDisk.subarray(i * 65536, (i + 1) * 65536).equals(blocks[i]), `block ${i}`);
  client.destroy();
  fs.rmSync(dir, { recursive: true, force: true });
});
