import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type tls from 'node:tls';
import { RawClient } from '../helpers/raw-client.js';
import { type ServerProcess, startServerProcess } from '../helpers/server-process.js';
import { makePki, makePskFile, type Pki } from '../helpers/tls-files.js';
import { makeTempDir, run, runOk } from '../helpers/tools.js';

/**
 * Every way a client can fail TLS, each refused the spec's way, and a good
 * TLS client served right after; then the protocol's edges (STARTTLS with
 * data, twice, bytes sent too early, plaintext inside TLS, garbage and
 * resets instead of a handshake, a stalled handshake), sent by a raw client
 * with Node's own TLS client so the wire is exactly what the test says.
 */
const ACK = 1;
const ERR_INVALID = 0x80000003;
const ERR_TLS_REQD = 0x80000005;
const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, SET_META_CONTEXT: 10 };
const sizeBytes = 16 * 1024 * 1024;
const handshakeTimeoutMs = 1500;

let dir: string;
let pki: Pki;
let otherPki: Pki;
let pskFile: string;
let required: ServerProcess;
let psk: ServerProcess;
let offered: ServerProcess;

test.before(async () => {
  dir = makeTempDir('tls-refusals');
  [pki, otherPki] = await Promise.all([makePki(dir, 'ours'), makePki(dir, 'other')]);
  pskFile = await makePskFile(path.join(dir, 'psk', 'keys.psk'), 'alice');
  const common = (name: string): string[] => ['--leg', path.join(dir, `${name}.img`), '--size', String(sizeBytes), '--no-unix',
    '--export-name', 'disk', '--handshake-timeout-ms', String(handshakeTimeoutMs)];
  [required, psk, offered] = await Promise.all([
    startServerProcess([...common('required'), '--tls', 'require', '--tls-certificates', pki.serverDir, '--tls-verify-peer']),
    startServerProcess([...common('psk'), '--tls', 'require', '--tls-psk', pskFile]),
    startServerProcess([...common('offered'), '--tls', 'on', '--tls-certificates', pki.serverDir]),
  ]);
});

test.after.always(async () => {
  await Promise.all([required?.stop(), psk?.stop(), offered?.stop()]);
  fs.rmSync(dir, { recursive: true, force: true });
});

async function goodClientServed(server: ServerProcess = required): Promise<boolean> {
  const result = await run('nbdinfo', ['--size', `nbds://127.0.0.1:${server.port}/disk?tls-certificates=${pki.clientDir}`]);
  return result.code === 0 && result.stdout.trim() === String(sizeBytes);
}

function loggedReason(server: ServerProcess, pattern: RegExp): boolean {
  return server.logs.some((entry) => typeof entry.reason === 'string' && pattern.test(entry.reason));
}

async function waitForLog(server: ServerProcess, pattern: RegExp, timeoutMs = 3000): Promise<boolean> {
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline;) {
    if (loggedReason(server, pattern)) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return loggedReason(server, pattern);
}

/** Node's client credentials: trusts `ca`, presents `certificates`' client certificate if given. */
function nodeTls(ca: Pki, certificates?: Pki): tls.ConnectionOptions {
  return {
    ca: fs.readFileSync(ca.caCert), servername: 'localhost',
    ...(certificates === undefined ? {} : {
      cert: fs.readFileSync(path.join(certificates.clientDir, 'client-cert.pem')),
      key: fs.readFileSync(path.join(certificates.clientDir, 'client-key.pem')),
    }),
  };
}

async function startTlsAcked(server: ServerProcess): Promise<RawClient> {
  const client = await RawClient.connect(server.port);
  await client.greet();
  await client.sendOption(OPT.STARTTLS, Buffer.alloc(0));
  const reply = await client.readOptionReply();
  if (reply.type !== ACK) throw new Error(`STARTTLS answered 0x${reply.type.toString(16)}`);
  return client;
}

test.serial('a client that does not trust our CA refuses us; the server goes on', async (t) => {
  const result = await run('nbdinfo', ['--size', `nbds://127.0.0.1:${required.port}/disk?tls-certificates=${otherPki.clientDir}`]);
  t.not(result.code, 0);
  t.regex(result.stderr, /certificate|verif/i);
  t.true(await goodClientServed());
});

test.serial('verify-peer: no client certificate, or one signed by another CA, is refused', async (t) => {
  const anonymous = await run('nbdinfo', ['--size', `nbds://127.0.0.1:${required.port}/disk?tls-certificates=${pki.anonymousClientDir}`]);
  t.not(anonymous.code, 0, 'libnbd without a client certificate');
  t.true(await waitForLog(required, /^TLS: .*certificate/i), 'the refusal is logged with its reason');

  // GnuTLS only offers a certificate the server's CA list names, so Node's client presents the stranger.
  const stranger = await startTlsAcked(required);
  await stranger.startTls(nodeTls(pki, otherPki)).catch(() => undefined);
  t.true(await stranger.closedWithin(3000), 'a certificate from another CA ends the connection');
  t.true(await waitForLog(required, /not signed by ca-cert\.pem/));
  t.true(await goodClientServed());
});

test.serial('PSK: a wrong key and an unknown user are refused; the right key is served', async (t) => {
  const wrongKey = path.join(dir, 'wrong', 'keys.psk');
  fs.mkdirSync(path.dirname(wrongKey), { recursive: true });
  fs.writeFileSync(wrongKey, `alice:${crypto.randomBytes(32).toString('hex')}\n`);
  const wrong = await run('nbdinfo', ['--size', `nbds://alice@127.0.0.1:${psk.port}/disk?tls-psk-file=${wrongKey}`]);
  t.not(wrong.code, 0, 'wrong key');
  const mallory = await makePskFile(path.join(dir, 'mallory', 'keys.psk'), 'mallory');
  const unknown = await run('nbdinfo', ['--size', `nbds://mallory@127.0.0.1:${psk.port}/disk?tls-psk-file=${mallory}`]);
  t.not(unknown.code, 0, 'unknown user');
  const right = await runOk('nbdinfo', ['--size', `nbds://alice@127.0.0.1:${psk.port}/disk?tls-psk-file=${pskFile}`]);
  t.is(right.stdout.trim(), String(sizeBytes));
});

test.serial('require: plaintext options get ERR_TLS_REQD, nothing is listed, EXPORT_NAME disconnects', async (t) => {
  const plain = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${required.port}/disk`]);
  t.not(plain.code, 0, 'libnbd without TLS');
  const client = await RawClient.connect(required.port);
  await client.greet();
  const info = Buffer.alloc(6);
  for (const [option, payload] of [[OPT.LIST, Buffer.alloc(0)], [OPT.INFO, info], [OPT.GO, info],
    [OPT.STRUCTURED_REPLY, Buffer.alloc(0)], [OPT.SET_META_CONTEXT, Buffer.alloc(8)], [12345, Buffer.alloc(3)]] as const) {
    await client.sendOption(option, payload);
    const reply = await client.readOptionReply();
    t.is(reply.type, ERR_TLS_REQD, `option ${option}`);
  }
  // An option too long to buffer is skipped unread and gets the same answer.
  await client.sendOption(12345, Buffer.alloc(100 * 1024));
  t.is((await client.readOptionReply()).type, ERR_TLS_REQD, 'a 100 KiB unknown option before TLS');
  await client.sendOption(OPT.ABORT, Buffer.alloc(0));
  t.is((await client.readOptionReply()).type, ACK, 'ABORT is still answered');
  t.true(await client.closedWithin(3000));

  const exportName = await RawClient.connect(required.port);
  await exportName.greet();
  await exportName.sendOption(OPT.EXPORT_NAME, Buffer.from('disk'));
  t.true(await exportName.closedWithin(3000), 'EXPORT_NAME cannot be refused, so the session ends');
  t.true(await goodClientServed());
});

test.serial('after STARTTLS negotiation starts over; STARTTLS with data or twice is ERR_INVALID', async (t) => {
  const client = await RawClient.connect(offered.port);
  await client.greet();
  await client.sendOption(OPT.STRUCTURED_REPLY, Buffer.alloc(0));
  t.is((await client.readOptionReply()).type, ACK, 'structured replies negotiated in plaintext');
  await client.sendOption(OPT.STARTTLS, Buffer.from('x'));
  t.is((await client.readOptionReply()).type, ERR_INVALID, 'STARTTLS with data');
  await client.sendOption(OPT.STARTTLS, Buffer.alloc(0));
  t.is((await client.readOptionReply()).type, ACK);
  await client.startTls(nodeTls(pki));
  const meta = Buffer.alloc(8);
  await client.sendOption(OPT.SET_META_CONTEXT, meta);
  t.is((await client.readOptionReply()).type, ERR_INVALID, 'structured replies were forgotten');
  await client.sendOption(OPT.STRUCTURED_REPLY, Buffer.alloc(0));
  t.is((await client.readOptionReply()).type, ACK, 'and can be negotiated again');
  await client.sendOption(OPT.STARTTLS, Buffer.alloc(0));
  t.is((await client.readOptionReply()).type, ERR_INVALID, 'a second STARTTLS');
  const { sizeBytes: size } = await client.go('disk');
  t.is(size, sizeBytes, 'GO inside TLS');
  client.destroy();
});

test.serial('bytes sent after STARTTLS before its reply end the connection', async (t) => {
  const client = await RawClient.connect(offered.port);
  await client.greet();
  const header = Buffer.alloc(16);
  header.write('IHAVEOPT', 0, 'latin1');
  header.writeUInt32BE(OPT.STARTTLS, 8);
  await client.write(Buffer.concat([header, Buffer.from('\x16\x03\x01early')]));
  t.true(await client.closedWithin(3000));
  t.true(await waitForLog(offered, /after NBD_OPT_STARTTLS before its reply/));
});

test.serial('garbage for a ClientHello, plaintext inside TLS, and a reset mid-handshake each end only that connection', async (t) => {
  const garbage = await startTlsAcked(offered);
  await garbage.write(crypto.randomBytes(2000));
  t.true(await garbage.closedWithin(3000), 'garbage instead of a ClientHello');

  const plaintextInside = await startTlsAcked(offered);
  const underlying = plaintextInside.socket;
  await plaintextInside.startTls(nodeTls(pki));
  const option = Buffer.alloc(16);
  option.write('IHAVEOPT', 0, 'latin1');
  option.writeUInt32BE(OPT.LIST, 8);
  underlying.write(option);
  t.true(await plaintextInside.closedWithin(3000), 'a plaintext option after the TLS handshake');

  const reset = await startTlsAcked(offered);
  await reset.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
  reset.socket.resetAndDestroy();
  t.true(await goodClientServed(offered));
  t.true(await goodClientServed(required));
});

test.serial('a TLS handshake that stalls is dropped at the handshake deadline', async (t) => {
  const stalled = await startTlsAcked(required);
  const started = Date.now();
  t.true(await stalled.closedWithin(handshakeTimeoutMs + 3000));
  t.true(Date.now() - started >= handshakeTimeoutMs - 200, 'not before the deadline');
  t.true(await goodClientServed());
});
