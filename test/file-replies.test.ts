import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { FileLeg } from '../backends/file-leg.js';
import { BufferPool } from '../blockdev/buffer-pool.js';
import type { BlockError } from '../blockdev/errors.js';
import { ReplyWriter } from '../nbd/reply-writer.js';
import { projectRoot } from './helpers/server-process.js';
import { startLegServer } from './helpers/leg-server.js';
import { attachClient, type RawClient, READ, requestHeader } from './helpers/raw-client.js';
import { makeTempDir, openDescriptorCount, run } from './helpers/tools.js';
import { waitUntil } from './helpers/wait.js';

/**
 * Large reads of a file leg go out by sendfile from a pool thread, and every
 * other reply through Node's writes, on the same socket (nbd/reply-writer.ts).
 * Whatever the client does (pipelines both kinds, stops reading, hangs up),
 * each reply must arrive whole, in one piece, with the file's bytes.
 */
const MiB = 1024 * 1024;
const sizeBytes = 64 * MiB;

async function readReply(client: RawClient, lengths: Map<bigint, { offsetBytes: number; lengthBytes: number }>,
  contents: Buffer): Promise<string | undefined> {
  const reply = await client.readSimpleReply();
  const request = lengths.get(reply.cookie);
  if (request === undefined) return `reply for unknown cookie ${reply.cookie}`;
  lengths.delete(reply.cookie);
  if (reply.error !== 0) return `read at ${request.offsetBytes} failed with ${reply.error}`;
  const data = await client.read(request.lengthBytes, 30_000);
  const { offsetBytes, lengthBytes } = request;
  if (!data.equals(contents.subarray(offsetBytes, offsetBytes + lengthBytes))) {
    return `read of ${lengthBytes} at ${offsetBytes} differs from the file`;
  }
  return undefined;
}

test('pipelined reads of every size come back whole, large ones by sendfile', async (t) => {
  const contents = crypto.randomBytes(sizeBytes);
  // The client reads in this process: a busy machine can leave it unread for
  // more than the 5 ms default stall, which would finish a reply through Node.
  const harness = await startLegServer(t, { sizeBytes, contents, connection: { fileReplyStallMs: 10_000 } });
  const client = await attachClient(harness.address);
  const lengths = new Map<bigint, { offsetBytes: number; lengthBytes: number }>();
  const sizes = [1, 512, 4096, 65536, 131071, 131072, 200_000, MiB, 4 * MiB + 3];
  const requests: Buffer[] = [];
  for (let index = 0; index < 120; index += 1) {
    const lengthBytes = sizes[index % sizes.length];
    const offsetBytes = (index * 7_654_321) % (sizeBytes - lengthBytes);
    const cookie = BigInt(index + 1);
    lengths.set(cookie, { offsetBytes, lengthBytes });
    requests.push(requestHeader(READ, cookie, offsetBytes, lengthBytes));
  }
  // The tail of the device, through both paths.
  lengths.set(1000n, { offsetBytes: sizeBytes - 3 * MiB, lengthBytes: 3 * MiB });
  requests.push(requestHeader(READ, 1000n, sizeBytes - 3 * MiB, 3 * MiB));
  lengths.set(1001n, { offsetBytes: sizeBytes - 100, lengthBytes: 100 });
  requests.push(requestHeader(READ, 1001n, sizeBytes - 100, 100));
  await client.write(Buffer.concat(requests));
  for (let count = requests.length; count > 0; count -= 1) {
    const problem = await readReply(client, lengths, contents);
    if (problem !== undefined) return t.fail(problem);
  }
  t.is(lengths.size, 0);
  // Pipelined, a large read may be declined (replies still queued in Node go
  // first); one at a time, nothing is queued, so each goes out by sendfile.
  // The server counts a sendfile's bytes in the job's completion callback, which this process (the
  // client too) may run after the client has read them: counts are taken once they stop moving.
  const settledSent = async (): Promise<number> => {
    let last = -1;
    await waitUntil(() => {
      const now = harness.server.fileReplyStats.bytesSent;
      const still = now === last;
      last = now;
      return still;
    }, 5000, 50);
    return last;
  };
  const before = await settledSent();
  for (let index = 0; index < 3; index += 1) {
    lengths.set(2000n, { offsetBytes: index * 3 * MiB, lengthBytes: 2 * MiB });
    await client.write(requestHeader(READ, 2000n, index * 3 * MiB, 2 * MiB));
    const problem = await readReply(client, lengths, contents);
    if (problem !== undefined) return t.fail(problem);
  }
  const sent = await settledSent() - before;
  const { declined, stalled } = harness.server.fileReplyStats;
  t.is(sent, 3 * (16 + 2 * MiB), `a lone large read did not go out by sendfile (declined ${declined}, stalled ${stalled} in the whole test)`);
  client.destroy();
});

test('with fileReplyBytesMin out of reach every read is copied, and reads the same', async (t) => {
  const contents = crypto.randomBytes(8 * MiB);
  const harness = await startLegServer(t, { sizeBytes: 8 * MiB, contents, connection: { fileReplyBytesMin: Infinity } });
  const client = await attachClient(harness.address);
  await client.write(requestHeader(READ, 1n, MiB, 4 * MiB));
  t.is((await client.readSimpleReply()).error, 0);
  t.true((await client.read(4 * MiB)).equals(contents.subarray(MiB, 5 * MiB)));
  t.is(harness.server.fileReplyStats.bytesSent, 0);
  client.destroy();
});

for (const mode of ['off', 'on'] as const) {
  test(`libnbd pipelining mixed reads with structured replies ${mode} reads the file's bytes`, async (t) => {
    const contents = crypto.randomBytes(sizeBytes);
    const harness = await startLegServer(t, { sizeBytes, contents });
    const script = path.join(projectRoot, 'test', 'python', 'read_mix.py');
    const result = await run('/usr/bin/python3', [script, `nbd://127.0.0.1:${harness.address}`, mode, harness.legPath,
      mode === 'on' ? '7' : '8'], { timeoutMs: 120_000 });
    t.is(result.code, 0, `${result.stdout}\n${result.stderr}`);
    t.regex(result.stdout, /^ok$/m);
    t.true(harness.server.fileReplyStats.bytesSent > 0, 'no read went out by sendfile');
  });
}

test('a client that stops reading mid-reply gets the rest when it reads again, and others are served meanwhile', async (t) => {
  const contents = crypto.randomBytes(sizeBytes);
  const harness = await startLegServer(t, { sizeBytes, contents });
  const slow = await attachClient(harness.address);
  const healthy = await attachClient(harness.address);
  slow.socket.pause();
  const lengths = new Map<bigint, { offsetBytes: number; lengthBytes: number }>();
  const requests: Buffer[] = [];
  // Far more than the socket buffers hold: the sender finds the socket full and must give its thread back.
  for (let index = 0; index < 12; index += 1) {
    const lengthBytes = index % 3 === 2 ? 4096 : 4 * MiB;
    const offsetBytes = index * 5 * MiB;
    lengths.set(BigInt(index + 1), { offsetBytes, lengthBytes });
    requests.push(requestHeader(READ, BigInt(index + 1), offsetBytes, lengthBytes));
  }
  await slow.write(Buffer.concat(requests));
  await new Promise((resolve) => setTimeout(resolve, 300));
  // The pool has 4 threads; a stalled reply holding one would show as a stall here.
  const healthyLengths = new Map<bigint, { offsetBytes: number; lengthBytes: number }>();
  for (let index = 0; index < 8; index += 1) {
    healthyLengths.set(BigInt(index + 1), { offsetBytes: index * MiB, lengthBytes: 2 * MiB });
    await healthy.write(requestHeader(READ, BigInt(index + 1), index * MiB, 2 * MiB));
    const problem = await readReply(healthy, healthyLengths, contents);
    if (problem !== undefined) return t.fail(`healthy client: ${problem}`);
  }
  slow.socket.resume();
  for (let count = requests.length; count > 0; count -= 1) {
    const problem = await readReply(slow, lengths, contents);
    if (problem !== undefined) return t.fail(`slow client: ${problem}`);
  }
  t.is(lengths.size, 0);
  const { stalled, declined } = harness.server.fileReplyStats;
  t.true(stalled >= 1, 'no reply found the socket full and finished through Node');
  t.true(declined >= 1, 'no reply was declined while Node still had bytes to write');
  slow.destroy();
  healthy.destroy();
});

test.serial('a client that hangs up with replies in flight leaves no descriptor behind and harms no one', async (t) => {
  const contents = crypto.randomBytes(sizeBytes);
  const harness = await startLegServer(t, { sizeBytes, contents });
  const healthy = await attachClient(harness.address);
  const descriptorsBefore = openDescriptorCount();
  for (let round = 0; round < 5; round += 1) {
    const quitter = await attachClient(harness.address);
    quitter.socket.pause();
    const requests: Buffer[] = [];
    for (let index = 0; index < 10; index += 1) requests.push(requestHeader(READ, BigInt(index + 1), index * 6 * MiB, 4 * MiB));
    await quitter.write(Buffer.concat(requests));
    await new Promise((resolve) => setTimeout(resolve, 20 + round * 30));
    quitter.destroy();
  }
  t.true(await waitUntil(() => harness.server.connectionCount === 1, 10_000, 20), 'quitters still connected');
  t.is(openDescriptorCount(), descriptorsBefore, 'a socket descriptor outlived its connection');
  const lengths = new Map([[9n, { offsetBytes: 3 * MiB, lengthBytes: 4 * MiB }]]);
  await healthy.write(requestHeader(READ, 9n, 3 * MiB, 4 * MiB));
  t.is(await readReply(healthy, lengths, contents), undefined);
  healthy.destroy();
});

test('shutting down with a client not reading its large replies finishes', async (t) => {
  const harness = await startLegServer(t, { sizeBytes, contents: crypto.randomBytes(sizeBytes) });
  const stuck = await attachClient(harness.address);
  stuck.socket.pause();
  const requests: Buffer[] = [];
  for (let index = 0; index < 8; index += 1) requests.push(requestHeader(READ, BigInt(index + 1), index * 4 * MiB, 4 * MiB));
  await stuck.write(Buffer.concat(requests));
  await new Promise((resolve) => setTimeout(resolve, 100));
  const started = Date.now();
  await harness.close();
  t.true(Date.now() - started < 8000, `shutdown took ${Date.now() - started} ms`);
  stuck.destroy();
});

test('a file cut short under the server: the missing tail is sent as zeroes, framing intact', async (t) => {
  const contents = crypto.randomBytes(16 * MiB);
  const harness = await startLegServer(t, { sizeBytes: 16 * MiB, contents });
  const client = await attachClient(harness.address);
  fs.truncateSync(harness.legPath, 15 * MiB + 100);
  await client.write(Buffer.concat([
    requestHeader(READ, 1n, 14 * MiB, 2 * MiB),
    requestHeader(READ, 2n, 0, 4096),
  ]));
  const expected = Buffer.concat([contents.subarray(14 * MiB, 15 * MiB + 100), Buffer.alloc(MiB - 100)]);
  for (let count = 0; count < 2; count += 1) {
    const reply = await client.readSimpleReply();
    t.is(reply.error, 0);
    const data = await client.read(reply.cookie === 1n ? 2 * MiB : 4096);
    t.true(data.equals(reply.cookie === 1n ? expected : contents.subarray(0, 4096)), `reply ${reply.cookie}`);
  }
  client.destroy();
});

test('a file leg waits for lent ranges before it closes its descriptor', async (t) => {
  const dir = makeTempDir('lease');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const leg = await FileLeg.open({ path: path.join(dir, 'leg.img'), createSizeBytes: MiB });
  const lease = leg.lendFileRange(4096, 8192);
  t.truthy(lease, 'a file leg lends its ranges when the addon has sendfile');
  let closed = false;
  const closing = leg.close().then(() => { closed = true; });
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.false(closed, 'closed while a range was lent');
  t.is(leg.lendFileRange(0, 4096), undefined, 'a closing leg lends nothing more');
  lease!.release();
  await closing;
  t.true(closed);
  t.throws(() => lease!.release(), { message: /released twice/ });
});

test('a file reply that fails after its header went out breaks the connection instead of leaving it unframed', async (t) => {
  const accepted = new Promise<net.Socket>((resolve) => {
    const listener = net.createServer((socket) => { listener.close(); resolve(socket); });
    listener.listen(0, '127.0.0.1', () => {
      const peer = net.connect((listener.address() as net.AddressInfo).port, '127.0.0.1');
      peer.on('error', () => undefined);
      t.teardown(() => peer.destroy());
    });
  });
  const socket = await accepted;
  t.teardown(() => socket.destroy());
  const broken: string[] = [];
  const writer = new ReplyWriter(socket, { shouldCork: () => false, flowChanged: () => undefined,
    broken: (reason) => broken.push(reason) }, { bufferPool: new BufferPool(MiB), fileStallMs: 5 });
  t.true(writer.canSendFiles);
  const header = Buffer.alloc(16, 0xab);
  // A descriptor number nothing has open: sendfile fails once the header is on the wire.
  const error = await t.throwsAsync(writer.sendFile({ header, fd: 1_000_000, positionBytes: 0, lengthBytes: MiB }));
  t.is((error as BlockError).code, 'EIO');
  t.regex((error as BlockError).message, /errno 9\b/);
  t.is(broken.length, 1);
  t.regex(broken[0], /after 16 of its bytes/);
  writer.close();
});
