import test, { type ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type tls from 'node:tls';
import { defaultConnectionOptions } from '../nbd/connection.js';
import { loadTlsServer } from '../nbd/tls-credentials.js';
import { type LegServer, startLegServer } from './helpers/leg-server.js';
import { attachClient, attachTlsClient, type RawClient, READ, requestHeader, WRITE } from './helpers/raw-client.js';
import { makePki } from './helpers/tls-files.js';
import { makeTempDir } from './helpers/tools.js';

/**
 * WRITE payloads reach the device by three paths: a view of a received slab,
 * a copy assembled from several reads, and (for large payloads) the kernel
 * receiving straight into the payload's buffer. Whatever the client's bytes
 * look like on the wire (fragmented anywhere, pipelined, interrupted), every
 * path must deliver exactly the bytes sent, in order.
 */
const sizeBytes = 32 * 1024 * 1024;

type Harness = LegServer & { attach(): Promise<RawClient> };

/**
 * `tls: 'require'`: clients attach through STARTTLS (x509, Node's client).
 * `tls: 'offered'`: the server offers TLS and the client stays in plaintext.
 */
async function startServer(t: ExecutionContext,
  options: { directReads: boolean; inFlightRequestsMax?: number; unix?: boolean; tls?: 'require' | 'offered' }): Promise<Harness> {
  let clientTls: tls.ConnectionOptions | undefined;
  let serverTls: ReturnType<typeof loadTlsServer>;
  if (options.tls) {
    const dir = makeTempDir('receive-tls');
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const pki = await makePki(dir);
    serverTls = loadTlsServer({ mode: options.tls === 'require' ? 'require' : 'on', certificates: pki.serverDir, verifyPeer: false, psk: undefined });
    if (options.tls === 'require') clientTls = { ca: fs.readFileSync(pki.caCert), servername: 'localhost',
      cert: fs.readFileSync(path.join(pki.clientDir, 'client-cert.pem')), key: fs.readFileSync(path.join(pki.clientDir, 'client-key.pem')) };
  }
  const harness = await startLegServer(t, {
    sizeBytes,
    unix: options.unix,
    connection: {
      directReads: options.directReads,
      inFlightRequestsMax: options.inFlightRequestsMax ?? defaultConnectionOptions.inFlightRequestsMax,
      tls: serverTls,
    },
  });
  return { ...harness, attach: () => (clientTls === undefined ? attachClient(harness.address) : attachTlsClient(harness.address, clientTls)) };
}

/** Deterministic sizes around every boundary the receive paths have. */
const payloadSizes = [1, 512, 4096, 65535, 65536, 65537, 200_000, 262_144, 1 << 20, (1 << 20) + 1, 3 * 1024 * 1024 + 7];

/** Sends the stream in fragments of random size, sometimes pausing, so reads split it everywhere. */
async function sendFragmented(client: RawClient, stream: Buffer, random: () => number): Promise<void> {
  for (let sent = 0; sent < stream.length;) {
    const fragment = Math.min(stream.length - sent, 1 + Math.floor(random() * (random() < 0.5 ? 600 : 400_000)));
    await client.write(stream.subarray(sent, sent + fragment));
    sent += fragment;
    if (random() < 0.2) await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

function seededRandom(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}

async function pipelinedWritesReadBack(t: ExecutionContext, harness: Harness, seed: number): Promise<void> {
  const random = seededRandom(seed);
  const model = Buffer.alloc(sizeBytes);
  const client = await harness.attach();
  const parts: Buffer[] = [];
  let cookie = 1n;
  // Overlapping writes on one connection apply in order, so the model is the last writer's bytes.
  for (let index = 0; index < 48; index += 1) {
    const lengthBytes = payloadSizes[Math.floor(random() * payloadSizes.length)];
    const offsetBytes = Math.floor(random() * (sizeBytes - lengthBytes));
    const payload = crypto.randomBytes(lengthBytes);
    payload.copy(model, offsetBytes);
    parts.push(requestHeader(WRITE, cookie++, offsetBytes, lengthBytes), payload);
  }
  await sendFragmented(client, Buffer.concat(parts), random);
  for (let index = 0; index < 48; index += 1) t.is((await client.readSimpleReply()).error, 0);
  const chunkBytes = 4 * 1024 * 1024;
  for (let offsetBytes = 0; offsetBytes < sizeBytes; offsetBytes += chunkBytes) {
    await client.write(requestHeader(READ, cookie++, offsetBytes, chunkBytes));
    t.is((await client.readSimpleReply()).error, 0);
    const data = await client.read(chunkBytes);
    if (!data.equals(model.subarray(offsetBytes, offsetBytes + chunkBytes))) {
      t.fail(`bytes at ${offsetBytes}..${offsetBytes + chunkBytes} differ from what was written`);
    }
  }
  client.destroy();
}

for (const directReads of [true, false]) {
  const mode = directReads ? 'straight into payload buffers' : 'through the parse queue only';
  test(`fragmented, pipelined writes of every size arrive intact (${mode})`, async (t) => {
    const harness = await startServer(t, { directReads });
    await pipelinedWritesReadBack(t, harness, directReads ? 11 : 12);
    if (directReads) t.true(harness.server.directBytesReceived > 0, 'no payload took the direct path');
    else t.is(harness.server.directBytesReceived, 0);
  });
}

for (const directReads of [true, false]) {
  const mode = directReads ? 'decrypted straight into payload buffers' : 'decrypted into \'data\' events';
  test(`over TLS, fragmented, pipelined writes of every size arrive intact (${mode})`, async (t) => {
    const harness = await startServer(t, { directReads, tls: 'require' });
    await pipelinedWritesReadBack(t, harness, directReads ? 15 : 16);
    if (directReads) t.true(harness.server.directBytesReceived > 0, 'no payload took the direct path');
    else t.is(harness.server.directBytesReceived, 0);
  });
}

test('over TLS, flow control pausing mid-payload loses nothing (two requests in flight at most)', async (t) => {
  const harness = await startServer(t, { directReads: true, inFlightRequestsMax: 2, tls: 'require' });
  await pipelinedWritesReadBack(t, harness, 17);
  t.true(harness.server.directBytesReceived > 0);
});

test('a plaintext client of a server offering TLS gets the direct path too (the socket is read in place, not transferred)', async (t) => {
  const harness = await startServer(t, { directReads: true, tls: 'offered' });
  await pipelinedWritesReadBack(t, harness, 18);
  t.true(harness.server.directBytesReceived > 0, 'no payload took the direct path');
});

test('a unix socket client gets the same receive paths', async (t) => {
  const harness = await startServer(t, { directReads: true, unix: true });
  await pipelinedWritesReadBack(t, harness, 14);
  t.true(harness.server.directBytesReceived > 0, 'no payload took the direct path');
});

test('flow control pausing mid-payload loses nothing (two requests in flight at most)', async (t) => {
  const harness = await startServer(t, { directReads: true, inFlightRequestsMax: 2 });
  await pipelinedWritesReadBack(t, harness, 13);
  t.true(harness.server.directBytesReceived > 0);
});

test('a client that hangs up in the middle of a large payload harms no one else', async (t) => {
  const harness = await startServer(t, { directReads: true });
  const healthy = await attachClient(harness.address);
  const quitter = await attachClient(harness.address);
  const payload = crypto.randomBytes(2 * 1024 * 1024);
  await quitter.write(Buffer.concat([requestHeader(WRITE, 1n, 0, payload.length), payload.subarray(0, 700_000)]));
  await new Promise((resolve) => setTimeout(resolve, 50));
  quitter.destroy();
  // A large write on the healthy connection reuses pooled buffers the quitter may have held.
  const mine = crypto.randomBytes(1024 * 1024);
  await healthy.write(Buffer.concat([requestHeader(WRITE, 2n, 8 * 1024 * 1024, mine.length), mine]));
  t.is((await healthy.readSimpleReply()).error, 0);
  await healthy.write(requestHeader(READ, 3n, 0, 2 * 1024 * 1024));
  t.is((await healthy.readSimpleReply()).error, 0);
  // Nothing of the unfinished write reached the device.
  t.true((await healthy.read(2 * 1024 * 1024)).equals(Buffer.alloc(2 * 1024 * 1024)));
  await healthy.write(requestHeader(READ, 4n, 8 * 1024 * 1024, mine.length));
  t.is((await healthy.readSimpleReply()).error, 0);
  t.true((await healthy.read(mine.length)).equals(mine));
  healthy.destroy();
});

test('shutting down while a large payload is half received does not wait for the rest', async (t) => {
  const harness = await startServer(t, { directReads: true });
  const client = await attachClient(harness.address);
  const payload = crypto.randomBytes(4 * 1024 * 1024);
  await client.write(Buffer.concat([requestHeader(WRITE, 1n, 0, payload.length), payload.subarray(0, 1_500_000)]));
  await new Promise((resolve) => setTimeout(resolve, 50));
  const started = Date.now();
  await harness.server.shutdown();
  t.true(Date.now() - started < 3000, 'shutdown waited for a payload that was never going to come');
  t.true(await client.closedWithin(3000));
});
