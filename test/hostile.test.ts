import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { attachClient, RawClient, READ, requestHeader, WRITE } from './helpers/raw-client.js';
import { type ServerProcess, startServerProcess } from './helpers/server-process.js';
import { makeTempDir, openDescriptorCount, run } from './helpers/tools.js';

/**
 * Each bad input the spec names, sent by a raw client, while a well-behaved
 * client works alongside. Afterwards the server still serves and the data
 * written before the attack is intact (invariant I6: isolation).
 */
const FLUSH = 3;
const NBD_EINVAL = 22;
const NBD_ENOSPC = 28;
const ERR_UNSUP = 0x80000001;
const ERR_INVALID = 0x80000003;
const ERR_UNKNOWN = 0x80000006;
const ERR_TOO_BIG = 0x80000009;
const sizeBytes = 64 * 1024 * 1024;

let server: ServerProcess;
let dir: string;
const sentinel = crypto.randomBytes(1024 * 1024);

test.before(async () => {
  dir = makeTempDir('hostile');
  server = await startServerProcess(['--leg', path.join(dir, 'leg.img'), '--size', String(sizeBytes), '--no-unix',
    '--handshake-timeout-ms', '1500', '--max-connections', '256']);
  const client = await attach();
  await client.request(WRITE, { cookie: 7n, offset: 4n * 1024n * 1024n, payload: sentinel });
  const reply = await client.readSimpleReply();
  if (reply.error !== 0) throw new Error('setup write failed');
  client.destroy();
});

test.after.always(async () => {
  await server?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

function attach(): Promise<RawClient> {
  return attachClient(server.port);
}

async function sentinelIntact(): Promise<boolean> {
  const client = await attach();
  await client.request(READ, { cookie: 9n, offset: 4n * 1024n * 1024n, length: sentinel.length });
  const reply = await client.readSimpleReply();
  const data = await client.read(sentinel.length);
  client.destroy();
  return reply.error === 0 && data.equals(sentinel);
}

test.serial('unknown client flags and a client without fixed newstyle are disconnected', async (t) => {
  const unknownFlags = await RawClient.connect(server.port);
  await unknownFlags.greet(0x80000003);
  t.true(await unknownFlags.closedWithin(3000));
  const oldStyle = await RawClient.connect(server.port);
  await oldStyle.greet(0);
  t.true(await oldStyle.closedWithin(3000));
});

test.serial('bad option magic closes; unknown options get ERR_UNSUP and negotiation goes on', async (t) => {
  const badMagic = await RawClient.connect(server.port);
  await badMagic.greet();
  await badMagic.write(Buffer.alloc(16, 0x41));
  t.true(await badMagic.closedWithin(3000));

  const client = await RawClient.connect(server.port);
  await client.greet();
  for (const option of [4, 5, 11, 12345]) {
    await client.sendOption(option, Buffer.alloc(0));
    const reply = await client.readOptionReply();
    t.is(reply.option, option);
    t.is(reply.type, ERR_UNSUP, `option ${option}`);
  }
  await client.sendOption(8, Buffer.from('junk'));
  t.is((await client.readOptionReply()).type, ERR_INVALID, 'STRUCTURED_REPLY with a payload');
  await client.sendOption(10, Buffer.alloc(8));
  t.is((await client.readOptionReply()).type, ERR_INVALID, 'SET_META_CONTEXT before structured replies');
  await client.sendOption(3, Buffer.from('x'));
  t.is((await client.readOptionReply()).type, ERR_INVALID, 'LIST with a payload');
  const { sizeBytes: size } = await client.go();
  t.is(size, sizeBytes, 'GO still works after the bad options');
  client.destroy();
});

test.serial('lengths are bounded: huge name lengths, long names, oversized options', async (t) => {
  const client = await RawClient.connect(server.port);
  await client.greet();
  const lying = Buffer.alloc(6);
  lying.writeUInt32BE(0xffffffff, 0);
  await client.sendOption(7, lying);
  t.is((await client.readOptionReply()).type, ERR_INVALID, 'GO name length 0xffffffff');
  const longName = Buffer.alloc(6 + 5000, 0x61);
  longName.writeUInt32BE(5000, 0);
  longName.writeUInt16BE(0, 5004);
  await client.sendOption(6, longName);
  t.is((await client.readOptionReply()).type, ERR_INVALID, 'INFO with a 5000-byte name');
  const unknown = Buffer.alloc(6 + 4096, 0x62);
  unknown.writeUInt32BE(4096, 0);
  unknown.writeUInt16BE(0, 4100);
  await client.sendOption(6, unknown);
  t.is((await client.readOptionReply()).type, ERR_UNKNOWN, 'INFO for an unknown 4096-byte name');
  await client.sendOption(99, Buffer.alloc(100 * 1024));
  t.is((await client.readOptionReply()).type, ERR_UNSUP, 'an unknown 100 KiB option is skipped, not buffered, and unsupported');
  await client.sendOption(6, Buffer.alloc(100 * 1024));
  t.is((await client.readOptionReply()).type, ERR_TOO_BIG, 'a known option of 100 KiB is skipped and too big');
  await client.sendOption(8, Buffer.alloc(0));
  t.is((await client.readOptionReply()).type, 1, 'structured replies');
  for (const [count, queries] of [[2, 0], [0x40000000, 1], [200, 200]]) {
    // A meta-context request whose query count cannot fit its length is malformed (ERR_INVALID), never "too big".
    const name = Buffer.from('');
    const body = Buffer.alloc(8 + queries * 4);
    body.writeUInt32BE(name.length, 0);
    body.writeUInt32BE(count, 4);
    await client.sendOption(10, body);
    const expected = count * 4 > queries * 4 ? ERR_INVALID : ERR_TOO_BIG;
    t.is((await client.readOptionReply()).type, expected, `${count} queries in ${body.length} bytes`);
  }
  t.is((await client.go()).sizeBytes, sizeBytes, 'negotiation continues after each');
  client.destroy();

  // A 4 GiB option length: the server must not allocate it, nor read 4 GiB to skip it.
  const before = (await run('ps', ['-o', 'rss=', '-p', String(server.pid)])).stdout.trim();
  const greedy = await RawClient.connect(server.port);
  await greedy.greet();
  await greedy.sendOption(3, Buffer.alloc(1024 * 1024), 0xffffffff);
  t.true(await greedy.closedWithin(3000), 'an option over 16 MiB is taken as an attack');
  const after = (await run('ps', ['-o', 'rss=', '-p', String(server.pid)])).stdout.trim();
  t.true(Number(after) - Number(before) < 64 * 1024, `RSS grew from ${before} KiB to ${after} KiB`);
  greedy.destroy();
  // Just under the bound, an unknown option is read off and answered like any other.
  const patient = await RawClient.connect(server.port);
  await patient.greet();
  await patient.sendOption(77, Buffer.alloc(8 * 1024 * 1024));
  t.is((await patient.readOptionReply()).type, ERR_UNSUP, 'an 8 MiB unknown option');
  patient.destroy();
});

test.serial('EXPORT_NAME for an unknown export ends the session; a known one enters transmission', async (t) => {
  const unknown = await RawClient.connect(server.port);
  await unknown.greet();
  await unknown.sendOption(1, Buffer.from('no-such-export'));
  t.true(await unknown.closedWithin(3000));
  const known = await RawClient.connect(server.port);
  await known.greet(3);
  await known.sendOption(1, Buffer.alloc(0));
  const reply = await known.read(10);
  t.is(Number(reply.readBigUInt64BE(0)), sizeBytes);
  await known.request(FLUSH, { cookie: 3n });
  t.deepEqual(await known.readSimpleReply(), { error: 0, cookie: 3n });
  known.destroy();
});

test.serial('too many options and a stalled handshake are disconnected', async (t) => {
  const chatty = await RawClient.connect(server.port);
  await chatty.greet();
  const burst = Buffer.alloc(16 * 1100);
  for (let i = 0; i < 1100; i += 1) {
    burst.write('IHAVEOPT', i * 16, 'latin1');
    burst.writeUInt32BE(12345, i * 16 + 8);
  }
  await chatty.write(burst);
  t.true(await chatty.closedWithin(5000), 'over 1024 options');
  const stalled = await RawClient.connect(server.port);
  await stalled.read(18);
  t.true(await stalled.closedWithin(5000), 'silent client timed out');
});

test.serial('transmission errors get error replies and framing survives', async (t) => {
  const client = await attach();
  await client.request(99, { cookie: 1n });
  t.deepEqual(await client.readSimpleReply(), { error: NBD_EINVAL, cookie: 1n }, 'unknown command');
  await client.request(READ, { cookie: 2n, offset: BigInt(sizeBytes), length: 512 });
  t.deepEqual(await client.readSimpleReply(), { error: NBD_EINVAL, cookie: 2n }, 'read past the end');
  await client.request(READ, { cookie: 3n, offset: 0xffffffffffffff00n, length: 4096 });
  t.deepEqual(await client.readSimpleReply(), { error: NBD_EINVAL, cookie: 3n }, 'offset + length overflows');
  await client.request(WRITE, { cookie: 4n, offset: BigInt(sizeBytes - 100), payload: Buffer.alloc(4096, 1) });
  t.deepEqual(await client.readSimpleReply(), { error: NBD_ENOSPC, cookie: 4n }, 'write past the end, payload drained');
  await client.request(WRITE, { cookie: 5n, offset: 0n, payload: Buffer.alloc(33 * 1024 * 1024, 2) });
  t.deepEqual(await client.readSimpleReply(), { error: NBD_EINVAL, cookie: 5n }, '33 MiB write refused, payload drained');
  await client.request(WRITE, { cookie: 6n, offset: 0n, flags: 0x100, payload: Buffer.alloc(512, 3) });
  t.deepEqual(await client.readSimpleReply(), { error: NBD_EINVAL, cookie: 6n }, 'unknown flag on a write, payload drained');
  await client.request(FLUSH, { cookie: 7n, offset: 4096n });
  t.deepEqual(await client.readSimpleReply(), { error: NBD_EINVAL, cookie: 7n }, 'flush with an offset');
  await client.request(READ, { cookie: 8n, offset: 0n, length: 0 });
  t.deepEqual(await client.readSimpleReply(), { error: 0, cookie: 8n }, 'zero-length read');
  // Still framed: a real write and read after all of that.
  const data = crypto.randomBytes(8192);
  await client.request(WRITE, { cookie: 10n, offset: 1024n * 1024n, payload: data });
  t.deepEqual(await client.readSimpleReply(), { error: 0, cookie: 10n });
  await client.request(READ, { cookie: 11n, offset: 1024n * 1024n, length: 8192 });
  t.deepEqual(await client.readSimpleReply(), { error: 0, cookie: 11n });
  t.true((await client.read(8192)).equals(data));
  // Bad request magic is a hard disconnect.
  await client.write(Buffer.alloc(28, 0x55));
  t.true(await client.closedWithin(3000));
});

test.serial('hang-ups mid-request and thousands of connect/disconnects leak nothing', async (t) => {
  const baselineFds = openDescriptorCount(server.pid);
  const halfWrite = await attach();
  await halfWrite.write(Buffer.concat([requestHeader(WRITE, 0n, 0, 65536), Buffer.alloc(1000)]));
  halfWrite.destroy();
  const inFlight = await attach();
  for (let i = 0; i < 16; i += 1) await inFlight.request(READ, { cookie: BigInt(i), offset: 0n, length: 1024 * 1024 });
  inFlight.destroy();

  const rounds = 2000;
  for (let i = 0; i < rounds; i += 25) {
    await Promise.all(Array.from({ length: 25 }, async (_, j) => {
      const client = await RawClient.connect(server.port);
      if ((i + j) % 3 === 1) await client.read(18);
      if ((i + j) % 3 === 2) {
        await client.greet();
        await client.go();
      }
      client.destroy();
      await client.closed;
    }));
  }
  let fds = openDescriptorCount(server.pid);
  for (let attempt = 0; attempt < 50 && fds > baselineFds; attempt += 1) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    fds = openDescriptorCount(server.pid);
  }
  t.true(fds <= baselineFds, `open descriptors went from ${baselineFds} to ${fds}`);
  t.true(await sentinelIntact(), 'data written before the connection storm is intact');
});

test.serial('a well-behaved client keeps working while another misbehaves', async (t) => {
  const good = await attach();
  const data = crypto.randomBytes(65536);
  const attackers = Array.from({ length: 20 }, async (_, i) => {
    const bad = await RawClient.connect(server.port);
    await bad.greet();
    await bad.go();
    await bad.request(i % 2 === 0 ? 77 : READ, { offset: BigInt(sizeBytes) * 2n, length: 512 });
    await bad.write(Buffer.alloc(28, 0xff));
    await bad.closedWithin(3000);
    bad.destroy();
  });
  for (let i = 0; i < 50; i += 1) {
    await good.request(WRITE, { cookie: BigInt(i), offset: 2n * 1024n * 1024n, payload: data });
    t.is((await good.readSimpleReply()).error, 0);
  }
  await Promise.all(attackers);
  await good.request(READ, { cookie: 99n, offset: 2n * 1024n * 1024n, length: data.length });
  t.is((await good.readSimpleReply()).error, 0);
  t.true((await good.read(data.length)).equals(data));
  good.destroy();
  t.true(await sentinelIntact());
  const info = await run('nbdinfo', ['--size', server.uri()]);
  t.is(info.stdout.trim(), String(sizeBytes), 'a real client attaches afterwards');
});
