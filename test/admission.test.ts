import test from 'ava';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { attachClient, RawClient, READ } from './helpers/raw-client.js';
import { type ServerProcess, startServerProcess } from './helpers/server-process.js';
import { makeTempDir, run } from './helpers/tools.js';

/**
 * Who gets in when the house is full. Every 127.x.y.z address is this
 * machine, so one test can be hundreds of clients from many addresses.
 */
const sizeBytes = 16 * 1024 * 1024;
let dir: string;

test.before(() => {
  dir = makeTempDir('admission');
});

test.after.always(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

async function serve(name: string, args: string[]): Promise<ServerProcess> {
  return startServerProcess(['--leg', path.join(dir, `${name}.img`), '--size', String(sizeBytes), '--no-unix',
    '--metrics', '127.0.0.1:0', ...args]);
}

async function refusedCount(server: ServerProcess, reason: string): Promise<number> {
  const port = (server.logs.find((entry) => entry.msg === 'listening')?.metrics as { port: number }).port;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const match = new RegExp(`^nbd_mirror_connections_refused_total\\{reason="${reason}"\\} (\\d+)$`, 'm').exec(text);
  return match === null ? 0 : Number(match[1]);
}

/** A socket that connects and never sends a byte (it does not even read the greeting). */
function idleSocket(port: number, localAddress: string): Promise<net.Socket> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port, localAddress }, () => resolve(socket));
    socket.on('error', () => resolve(socket));
  });
}

/** Attaches as a prompt client does and reads 4 KiB; returns the milliseconds it took. */
async function attachAndRead(port: number, localAddress?: string): Promise<number> {
  const started = performance.now();
  const client = await RawClient.connect(port, localAddress);
  try {
    await client.greet();
    await client.go();
    await client.request(READ, { cookie: 1n, offset: 0n, length: 4096 });
    const reply = await client.readSimpleReply();
    await client.read(4096);
    if (reply.error !== 0) throw new Error(`read failed: ${reply.error}`);
    return performance.now() - started;
  } finally {
    client.destroy();
  }
}

function refusalsLogged(server: ServerProcess, reason: string): Array<Record<string, unknown>> {
  return server.logs.filter((entry) => entry.reason === reason);
}

test.serial('500 idle connections, and more arriving, never lock out a client that negotiates promptly', async (t) => {
  const server = await serve('idle', []);
  const idle: net.Socket[] = [];
  try {
    // 500 from 50 addresses, 10 each: under the per-address cap, so only the negotiating budget stands in the way.
    for (let batch = 0; batch < 50; batch += 1) {
      idle.push(...await Promise.all(Array.from({ length: 10 }, () => idleSocket(server.port, `127.0.0.${batch + 2}`))));
    }
    // Held: the server has taken all 500 in (a burst still in the kernel's accept queue delays everyone
    // behind it, in arrival order, which no admission policy can reorder).
    for (const deadline = Date.now() + 20_000; Date.now() < deadline && await refusedCount(server, 'negotiating-dropped') < 500 - 32;) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    // And an attacker still opening idle connections while the real client attaches.
    let opening = true;
    const attacker = (async () => {
      for (let i = 0; opening && i < 400; i += 1) {
        idle.push(await idleSocket(server.port, `127.0.1.${(i % 200) + 1}`));
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    })();
    const times: number[] = [];
    for (let round = 0; round < 5; round += 1) times.push(await attachAndRead(server.port));
    const nbdinfo = await run('nbdinfo', ['--size', server.uri()]);
    opening = false;
    await attacker;
    t.log(`attach and first read took ${times.map((ms) => ms.toFixed(0)).join(', ')} ms`);
    t.true(Math.max(...times) < 1000, `attach and first read took ${times.map((ms) => ms.toFixed(0)).join(', ')} ms`);
    t.is(nbdinfo.stdout.trim(), String(sizeBytes), nbdinfo.stderr);
    t.true(await refusedCount(server, 'negotiating-dropped') >= 500 - 32, 'the idle ones were dropped, oldest first');
    t.true(refusalsLogged(server, 'negotiating-dropped').length >= 468, 'each drop is logged');
  } finally {
    for (const socket of idle) socket.destroy();
    await server.stop();
  }
});

test.serial('a per-address cap of attached clients refuses the connection over it and no other address', async (t) => {
  const server = await serve('per-address', ['--per-address-max', '4']);
  const held: RawClient[] = [];
  try {
    for (let i = 0; i < 4; i += 1) held.push(await attachClient(server.port));
    const fifth = await RawClient.connect(server.port);
    await t.throwsAsync(fifth.read(18, 3000), { message: /closed/ }, 'the fifth from 127.0.0.1 gets no greeting');
    t.true(await attachAndRead(server.port, '127.0.0.2') < 1000, 'another address is served');
    t.is(await refusedCount(server, 'per-address-limit'), 1);
    const logged = refusalsLogged(server, 'per-address-limit');
    t.is(logged.length, 1, 'logged once');
    t.is(logged[0].remote, '127.0.0.1', 'with the address');
    held[0].destroy();
    await held[0].closed;
    await new Promise((resolve) => setTimeout(resolve, 100));
    t.true(await attachAndRead(server.port) < 1000, 'a slot freed is a slot');
  } finally {
    for (const client of held) client.destroy();
    await server.stop();
  }
});

test.serial('idle sockets from one address never lock out a prompt client from the same address', async (t) => {
  const server = await serve('shared-address', []);
  const idle: net.Socket[] = [];
  try {
    // localhost, NAT and proxies put many clients behind one address: 100 idle from 127.0.0.1, over the cap of 32.
    idle.push(...await Promise.all(Array.from({ length: 100 }, () => idleSocket(server.port, '127.0.0.1'))));
    for (const deadline = Date.now() + 20_000; Date.now() < deadline && await refusedCount(server, 'negotiating-dropped') < 100 - 32;) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const nbdinfo = await run('nbdinfo', ['--size', server.uri()]);
    t.is(nbdinfo.stdout.trim(), String(sizeBytes), nbdinfo.stderr);
    const copy = path.join(dir, 'shared-address.copy');
    await run('nbdcopy', [server.uri(), copy]);
    t.is(fs.statSync(copy).size, sizeBytes);
    t.true(await attachAndRead(server.port, '127.0.0.1') < 1000);
    t.is(await refusedCount(server, 'per-address-limit'), 0, 'nobody from 127.0.0.1 was refused');
    t.true(refusalsLogged(server, 'negotiating-dropped').some((entry) => /from its address/.test(String(entry.msg))),
      'the drops name the per-address cap');
  } finally {
    for (const socket of idle) socket.destroy();
    await server.stop();
  }
});

test.serial('the allow list refuses other addresses and serves the listed ones', async (t) => {
  const server = await serve('allow', ['--allow', '127.0.0.1, 127.0.0.64/26']);
  try {
    const stranger = await RawClient.connect(server.port, '127.0.0.2');
    await t.throwsAsync(stranger.read(18, 3000), { message: /closed/ });
    t.true(await attachAndRead(server.port, '127.0.0.70') < 1000, 'in 127.0.0.64/26');
    t.true(await attachAndRead(server.port) < 1000, '127.0.0.1');
    t.is(await refusedCount(server, 'not-allowed'), 1);
    t.regex(String(refusalsLogged(server, 'not-allowed')[0]?.msg), /127\.0\.0\.2 is not in listen\.allow/);
  } finally {
    await server.stop();
  }
});

test.serial('attached clients are never dropped for a newcomer; past maxConnections it is refused', async (t) => {
  const server = await serve('full', ['--max-connections', '4']);
  const attached: RawClient[] = [];
  try {
    for (let i = 0; i < 4; i += 1) attached.push(await attachClient(server.port));
    const late = await RawClient.connect(server.port);
    await t.throwsAsync(late.read(18, 3000), { message: /closed/ });
    t.is(await refusedCount(server, 'too-many-connections'), 1);
    for (const [index, client] of attached.entries()) {
      await client.request(READ, { cookie: BigInt(index), offset: 0n, length: 4096 });
      t.is((await client.readSimpleReply()).error, 0, `attached client ${index} still served`);
      await client.read(4096);
    }
  } finally {
    for (const client of attached) client.destroy();
    await server.stop();
  }
});
