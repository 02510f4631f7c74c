import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parseNbdUri } from '../../backends/nbd-client/nbd-uri.js';
import { RemoteLeg } from '../../backends/nbd-client/remote-leg.js';
import { TransmissionFlag } from '../../nbd/constants.js';
import { cli } from '../helpers/cli.js';
import { legsIdentical } from '../helpers/mirror-fixture.js';
import { serveRemote } from '../helpers/remote-exports.js';
import { defaultAnswer, startScriptedServer } from '../helpers/scripted-nbd-server.js';
import { startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, readFileRange, run } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const multiConn = TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH | TransmissionFlag.SEND_FUA | TransmissionFlag.SEND_WRITE_ZEROES
  | TransmissionFlag.CAN_MULTI_CONN;

/** Established TCP connections whose server end is 127.0.0.1:port, as the kernel lists them. */
function establishedTo(port: number): number {
  const hexPort = `:${port.toString(16).toUpperCase().padStart(4, '0')} `;
  return fs.readFileSync('/proc/net/tcp', 'latin1').split('\n').filter((line) => {
    const fields = line.trim().split(/\s+/);
    return fields[1]?.endsWith(hexPort.trim()) && fields[3] === '01';
  }).length;
}

for (const kind of ['nbdkit', 'qemu-nbd', 'nbd-mirror'] as const) {
  test(`four connections to ${kind}, which advertises multi-conn: requests spread over them, and one flush covers them all`, async (t) => {
    const remote = await serveRemote(t, kind, { sizeBytes: 64 * MiB });
    const address = parseNbdUri(remote.uri);
    const leg = await RemoteLeg.connect({ address, name: 'leg1', connections: 4 });
    t.teardown(() => leg.close());
    t.is(leg.connectionCount, 4);
    t.is(leg.connectionsNote, undefined);
    t.is(establishedTo(address.transport.kind === 'tcp' ? address.transport.port : 0), 4, 'the server holds four connections from us');

    const data = crypto.randomBytes(16 * MiB);
    await Promise.all(Array.from({ length: 64 }, (_, index) =>
      leg.write(index * 256 * 1024, data.subarray(index * 256 * 1024, (index + 1) * 256 * 1024), { fua: false })));
    await leg.flush();
    t.true(readFileRange(remote.file, 0, data.length).equals(data), 'every write is in the file after one flush');
    const back = Buffer.alloc(data.length);
    await Promise.all(Array.from({ length: 64 }, (_, index) => leg.read(index * 256 * 1024, back.subarray(index * 256 * 1024, (index + 1) * 256 * 1024))));
    t.true(back.equals(data));
  });
}

test('a remote that does not advertise multi-conn gets one connection, and the leg says why', async (t) => {
  const server = await startScriptedServer(t, { transmissionFlags: multiConn & ~TransmissionFlag.CAN_MULTI_CONN });
  const leg = await RemoteLeg.connect({ address: parseNbdUri(server.uri), name: 'leg1', connections: 4 });
  t.teardown(() => leg.close());
  t.is(leg.connectionCount, 1);
  t.regex(leg.connectionsNote ?? '', /4 connections asked for; the remote does not advertise multi-conn, so one is used/);
  await Promise.all(Array.from({ length: 8 }, (_, index) => leg.write(index * 4096, Buffer.alloc(4096, index), { fua: false })));
  await leg.flush();
  t.is(server.accepted(), 1);
  t.deepEqual(new Set(server.requests.map((request) => request.connection)), new Set([0]));
});

test('with multi-conn, requests of one burst go out on every connection', async (t) => {
  const server = await startScriptedServer(t, { transmissionFlags: multiConn });
  const leg = await RemoteLeg.connect({ address: parseNbdUri(server.uri), name: 'leg1', connections: 3 });
  t.teardown(() => leg.close());
  await Promise.all(Array.from({ length: 12 }, (_, index) => leg.write(index * 4096, Buffer.alloc(4096, index), { fua: false })));
  t.is(server.accepted(), 3);
  t.deepEqual(new Set(server.requests.map((request) => request.connection)), new Set([0, 1, 2]));
});

test('a second connection offered a different export refuses the leg, and no connection is left open', async (t) => {
  const server = await startScriptedServer(t, { transmissionFlags: multiConn, sizeOnConnection: (index) => (index === 0 ? MiB : 2 * MiB) });
  await t.throwsAsync(RemoteLeg.connect({ address: parseNbdUri(server.uri), name: 'leg1', connections: 2 }),
    { name: 'NegotiationError', message: /a second connection was offered a different export \(2097152 bytes/ });
  t.is(server.accepted(), 2);
  for (let attempt = 0; attempt < 100 && server.open() > 0; attempt++) await new Promise((resolve) => setTimeout(resolve, 20));
  t.is(server.open(), 0);
});

test('losing one of the connections loses the leg: the others are closed, what was on them fails with EIO, onLost fires once', async (t) => {
  const server = await startScriptedServer(t, {
    transmissionFlags: multiConn,
    answer: (request, socket, memory) => {
      // Connection 1 dies on its second request; on the others, reads past 512 KiB go unanswered (in flight when it dies).
      if (request.connection === 1 && server.requests.filter((each) => each.connection === 1).length === 2) socket.destroy();
      else if (request.type !== 0 || request.offset < 512 * 1024) defaultAnswer(request, socket, memory);
    },
  });
  const leg = await RemoteLeg.connect({ address: parseNbdUri(server.uri), name: 'leg1', connections: 3, requestTimeoutMs: 60_000 });
  t.teardown(() => leg.close());
  const lost: string[] = [];
  leg.onLost((reason) => lost.push(reason));
  const stuckReads = Array.from({ length: 3 }, (_, index) => leg.read(512 * 1024 + index * 4096, Buffer.alloc(4096)));
  const writes = Array.from({ length: 6 }, (_, index) => leg.write(index * 4096, Buffer.alloc(4096, 1), { fua: false }));
  const results = await Promise.allSettled([...stuckReads, ...writes]);
  for (const result of results.slice(0, 3)) {
    t.is(result.status, 'rejected');
    t.regex(String((result as PromiseRejectedResult).reason), /EIO: leg1: .*(the remote closed the connection|connection error)/);
  }
  t.is(lost.length, 1);
  await t.throwsAsync(leg.flush(), { message: /not connected/ });
  for (let attempt = 0; attempt < 100 && server.open() > 0; attempt++) await new Promise((resolve) => setTimeout(resolve, 20));
  t.is(server.open(), 0, 'the other connections were closed too');
});

test('a mirror whose remote leg has four connections (qemu-nbd): status shows them, and the legs agree after writes, trims and zeroing', async (t) => {
  const sizeBytes = 32 * MiB;
  const dir = makeTempDir('multi-conn-mirror');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const remote = await serveRemote(t, 'qemu-nbd', { sizeBytes: sizeBytes + MiB });
  const config = path.join(dir, 'config.yaml');
  fs.writeFileSync(config, `listen:\n  unix: nbd.sock\n  admin: admin.sock\nstorage:\n  sizeBytes: 32MiB\n  regionSize: 1MiB\n  log: mirror.log\n` +
    `  legs:\n    - path: leg0.img\n    - path: "${remote.uri}"\n      connections: 4\n`);
  const server = await startServerProcess(['-c', config]);
  const admin = path.join(dir, 'admin.sock');
  try {
    const io = await run('qemu-io', ['-f', 'raw', '-c', 'aio_write -P 0xab 0 8M', '-c', 'aio_write -P 0x5c 8M 8M', '-c', 'aio_flush',
      '-c', 'discard 1M 1M', '-c', 'write -z 9M 512k', '-c', 'write -P 0xcd 20M 4k', '-c', 'flush', server.uri()], { timeoutMs: 60_000 });
    t.is(io.code, 0, io.stderr);
    const status = JSON.parse((await cli(['status', '--admin', admin, '--json'])).stdout) as
      { health: string; legs: Array<{ remote: { link: string; connections: number } | null }> };
    t.is(status.health, 'optimal');
    t.deepEqual(status.legs[1].remote && { link: status.legs[1].remote.link, connections: status.legs[1].remote.connections },
      { link: 'connected', connections: 4 });
    t.regex((await cli(['check', '--admin', admin])).stdout, /mismatch_cnt 0/);
  } finally {
    t.is(await server.stop(), 0);
  }
  const same = legsIdentical([path.join(dir, 'leg0.img'), remote.file], sizeBytes);
  t.true(same.identical, `the legs differ at ${same.firstDifference}`);
});

test('connections is a remote leg\'s setting, from 1 to 16', async (t) => {
  const dir = makeTempDir('multi-conn-config');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cases: Array<[string, RegExp]> = [
    ['    - path: leg1.img\n      connections: 2\n', /storage\.legs\[1\]\.connections: applies to remote legs/],
    ['    - path: "nbd://127.0.0.1:1/disk"\n      connections: 17\n', /storage\.legs\[1\]\.connections/],
    ['    - path: "nbd://127.0.0.1:1/disk"\n      connections: 0\n', /storage\.legs\[1\]\.connections/],
  ];
  for (const [leg, expected] of cases) {
    const config = path.join(dir, 'config.yaml');
    fs.writeFileSync(config, `listen:\n  unix: nbd.sock\nstorage:\n  sizeBytes: 32MiB\n  log: mirror.log\n  legs:\n    - path: leg0.img\n${leg}`);
    const result = await cli(['serve', '-c', config]);
    t.not(result.code, 0);
    t.regex(result.stderr, expected);
    t.false(fs.existsSync(path.join(dir, 'mirror.log')), 'nothing was created');
  }
});
