import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parseNbdUri } from '../../backends/nbd-client/nbd-uri.js';
import { RemoteLeg } from '../../backends/nbd-client/remote-leg.js';
import { remoteSpecFor } from '../../backends/nbd-client/remote-spec.js';
import { cli } from '../helpers/cli.js';
import { legsIdentical } from '../helpers/mirror-fixture.js';
import { serveRemote } from '../helpers/remote-exports.js';
import { startServerProcess } from '../helpers/server-process.js';
import { makePki, makePskFile } from '../helpers/tls-files.js';
import { makeTempDir, run } from '../helpers/tools.js';

const MiB = 1024 * 1024;

function connect(uri: string): Promise<RemoteLeg> {
  const spec = remoteSpecFor(uri);
  return RemoteLeg.connect({ address: spec.address, name: 'leg1', connectTimeoutMs: 5000 }, spec.tls);
}

async function roundTrip(t: { true(value: boolean, message?: string): void }, leg: RemoteLeg): Promise<void> {
  const data = crypto.randomBytes(256 * 1024);
  await leg.write(MiB, data, { fua: true });
  const back = Buffer.alloc(data.length);
  await leg.read(MiB, back);
  t.true(back.equals(data), 'data written over TLS reads back');
}

const pkiDir = makeTempDir('remote-tls');
test.after.always(() => fs.rmSync(pkiDir, { recursive: true, force: true }));
const pkis = Promise.all([makePki(pkiDir, 'good'), makePki(pkiDir, 'other')]);

for (const kind of ['nbdkit', 'qemu-nbd'] as const) {
  test(`x509: a remote leg served by ${kind} with --tls require and client verification`, async (t) => {
    const [pki] = await pkis;
    const remote = await serveRemote(t, kind, { sizeBytes: 8 * MiB, tls: { certificates: pki.serverDir, verifyPeer: true } });
    const leg = await connect(remote.uri.replace(/^nbd:/, 'nbds:') + `?tls-certificates=${pki.clientDir}`);
    t.teardown(() => leg.close());
    await roundTrip(t, leg);
  });

  test(`PSK: a remote leg served by ${kind}`, async (t) => {
    const dir = makeTempDir('remote-psk');
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const keys = await makePskFile(path.join(dir, 'keys.psk'), 'alice');
    const remote = await serveRemote(t, kind, { sizeBytes: 8 * MiB, tls: { psk: keys } });
    const leg = await connect(remote.uri.replace(/^nbd:\/\//, 'nbds://alice@') + `?tls-psk-file=${keys}`);
    t.teardown(() => leg.close());
    await roundTrip(t, leg);
  });
}

test('refusals name the cause: a wrong CA, a certificate for another name, a wrong PSK key, a plaintext-only remote asked for TLS, a TLS-only remote asked without', async (t) => {
  const [pki, other] = await pkis;
  const dir = makeTempDir('remote-tls-refusals');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const x509 = await serveRemote(t, 'nbdkit', { sizeBytes: 8 * MiB, tls: { certificates: pki.serverDir, verifyPeer: true } });
  const tlsUri = x509.uri.replace(/^nbd:/, 'nbds:');
  await t.throwsAsync(connect(`${tlsUri}?tls-certificates=${other.clientDir}`), { message: /TLS handshake failed: .*certificate/ },
    'a server certificate from a CA the client does not trust');
  await t.throwsAsync(connect(`${tlsUri}?tls-certificates=${pki.clientDir}&tls-hostname=replica.example`),
    { message: /TLS handshake failed: .*(does not match|altnames)/ }, 'a certificate for another name (the server is localhost and 127.0.0.1)');
  await t.throwsAsync(connect(x509.uri), { message: /requires TLS .*use nbds:\/\//, name: 'NegotiationError' },
    'plaintext against a TLS-only remote');
  const anonymous = await t.throwsAsync(connect(`${tlsUri}?tls-certificates=${pki.anonymousClientDir}`));
  t.regex(anonymous?.message ?? '', /most likely requires a client certificate: put client-cert\.pem and client-key\.pem/,
    'a server that verifies clients, reached without a client certificate');

  const keys = await makePskFile(path.join(dir, 'keys.psk'), 'alice');
  const wrongKeys = await makePskFile(path.join(dir, 'wrong.psk'), 'alice');
  const psk = await serveRemote(t, 'nbdkit', { sizeBytes: 8 * MiB, tls: { psk: keys } });
  await t.throwsAsync(connect(psk.uri.replace(/^nbd:\/\//, 'nbds://alice@') + `?tls-psk-file=${wrongKeys}`),
    { message: /TLS handshake failed: .*most likely a key mismatch: the key for alice in .*wrong\.psk is not the server's/ },
    'the right user with the wrong key');

  const plain = await serveRemote(t, 'nbdkit', { sizeBytes: 8 * MiB });
  await t.throwsAsync(connect(plain.uri.replace(/^nbd:/, 'nbds:') + `?tls-certificates=${pki.clientDir}`),
    { message: /refused STARTTLS .*nbds never falls back to plaintext/ });
  t.throws(() => parseNbdUri(`${plain.uri}?tls-certificates=${pki.clientDir}`), { message: /plaintext \(use nbds\)/ });
  t.throws(() => remoteSpecFor(`${tlsUri}?tls-certificates=${path.join(dir, 'nowhere')}`), { message: /is not a folder/ });
});

test('a mirror whose remote leg is reached over TLS: configured by URI, written, checked, identical', async (t) => {
  const [pki] = await pkis;
  const dir = makeTempDir('remote-tls-mirror');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sizeBytes = 32 * MiB;
  const remote = await serveRemote(t, 'nbdkit', { sizeBytes: sizeBytes + MiB, tls: { certificates: pki.serverDir, verifyPeer: true } });
  const config = path.join(dir, 'config.yaml');
  fs.writeFileSync(config, `listen:\n  admin: admin.sock\nstorage:\n  sizeBytes: 32MiB\n  regionSize: 1MiB\n  log: mirror.log\n  legs:\n` +
    `    - path: leg0.img\n    - path: "${remote.uri.replace(/^nbd:/, 'nbds:')}?tls-certificates=${pki.clientDir}"\n`);
  const server = await startServerProcess(['-c', config]);
  try {
    const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 4M', '-c', 'write -z 2M 1M', '-c', 'flush', server.uri()], { timeoutMs: 60_000 });
    t.is(io.code, 0, io.stderr);
    t.regex((await cli(['check', '--admin', path.join(dir, 'admin.sock')])).stdout, /mismatch_cnt 0/);
  } finally {
    t.is(await server.stop(), 0);
  }
  t.true(legsIdentical([path.join(dir, 'leg0.img'), remote.file], sizeBytes).identical);
});

test('a TLS credential problem in the configuration stops the server before it starts, naming the key', async (t) => {
  const dir = makeTempDir('remote-tls-config');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const config = path.join(dir, 'config.yaml');
  fs.writeFileSync(config, 'storage:\n  sizeBytes: 32MiB\n  log: mirror.log\n  legs:\n    - path: leg0.img\n' +
    '    - path: "nbds://127.0.0.1:1/disk?tls-certificates=missing-folder"\n');
  const result = await cli(['serve', '-c', config]);
  t.not(result.code, 0);
  t.regex(result.stderr, /storage\.legs\[1\]\.path: .*missing-folder is not a folder/);
  t.false(fs.existsSync(path.join(dir, 'mirror.log')), 'nothing was created');
});
