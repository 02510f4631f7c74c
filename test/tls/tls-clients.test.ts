import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { type ServerProcess, startServerProcess } from '../helpers/server-process.js';
import { makePki, makePskFile, type Pki } from '../helpers/tls-files.js';
import { makeTempDir, run, runOk, sha256File, writeRandomFile } from '../helpers/tools.js';
import { waitUntil } from '../helpers/wait.js';

/**
 * Real TLS clients against the server: libnbd (nbdinfo, nbdcopy) and qemu
 * (qemu-img, qemu-io), both on GnuTLS, with x509 certificates and with
 * pre-shared keys, over TCP and the unix socket.
 */
const sizeBytes = 64 * 1024 * 1024;
let dir: string;
let pki: Pki;
let pskFile: string;
let x509: ServerProcess;
let psk: ServerProcess;
let offered: ServerProcess;

test.before(async () => {
  dir = makeTempDir('tls-clients');
  pki = await makePki(dir);
  pskFile = await makePskFile(path.join(dir, 'psk', 'keys.psk'), 'alice');
  const leg = (name: string): string[] => ['--leg', path.join(dir, `${name}.img`), '--size', String(sizeBytes), '--export-name', 'disk'];
  [x509, psk, offered] = await Promise.all([
    startServerProcess([...leg('x509'), '--unix', path.join(dir, 'x509.sock'), '--tls', 'require',
      '--tls-certificates', pki.serverDir, '--tls-verify-peer']),
    startServerProcess([...leg('psk'), '--no-unix', '--tls', 'require', '--tls-psk', pskFile]),
    startServerProcess([...leg('offered'), '--no-unix', '--tls', 'on', '--tls-certificates', pki.serverDir]),
  ]);
});

test.after.always(async () => {
  await Promise.all([x509?.stop(), psk?.stop(), offered?.stop()]);
  fs.rmSync(dir, { recursive: true, force: true });
});

const x509Uri = (server: ServerProcess, certificates = pki.clientDir): string =>
  `nbds://127.0.0.1:${server.port}/disk?tls-certificates=${certificates}`;
const pskUri = (username = 'alice', file = pskFile): string =>
  `nbds://${username}@127.0.0.1:${psk.port}/disk?tls-psk-file=${file}`;

function qemuX509(server: ServerProcess, certificates = pki.clientDir): string[] {
  return ['--object', `tls-creds-x509,id=tls0,dir=${certificates},endpoint=client`,
    '--image-opts', `driver=nbd,host=127.0.0.1,port=${server.port},export=disk,tls-creds=tls0`];
}

function qemuPsk(): string[] {
  return ['--object', `tls-creds-psk,id=tls0,dir=${path.dirname(pskFile)},username=alice,endpoint=client`,
    '--image-opts', `driver=nbd,host=127.0.0.1,port=${psk.port},export=disk,tls-creds=tls0`];
}

test.serial('nbdinfo attaches with x509 (client certificate verified) over TCP and the unix socket', async (t) => {
  const { stdout } = await runOk('nbdinfo', ['--json', x509Uri(x509)]);
  const info = JSON.parse(stdout) as { protocol: string; TLS: boolean; exports: Array<Record<string, unknown>> };
  t.true(info.TLS, 'libnbd reports TLS');
  t.is(info.exports[0]['export-size'], sizeBytes);
  t.deepEqual(info.exports[0].contexts, ['base:allocation'], 'options negotiated inside TLS');
  const unix = await runOk('nbdinfo', ['--size', `nbds+unix:///disk?socket=${x509.unixPath!}&tls-certificates=${pki.clientDir}`]);
  t.is(unix.stdout.trim(), String(sizeBytes));
  const listed = await runOk('nbdinfo', ['--list', '--json', x509Uri(x509)]);
  t.deepEqual((JSON.parse(listed.stdout) as { exports: Array<{ 'export-name': string }> }).exports.map((e) => e['export-name']), ['disk']);
});

test.serial('nbdcopy writes an image through x509 TLS and reads it back identical', async (t) => {
  const source = path.join(dir, 'source.img');
  writeRandomFile(source, 24 * 1024 * 1024, 21);
  await runOk('nbdcopy', [source, x509Uri(x509)]);
  const back = path.join(dir, 'back.img');
  await runOk('nbdcopy', ['--requests=16', x509Uri(x509), back]);
  fs.truncateSync(back, 24 * 1024 * 1024);
  t.is(sha256File(back), sha256File(source));
});

test.serial('qemu-img info/convert and qemu-io work with tls-creds-x509', async (t) => {
  const { stdout } = await runOk('qemu-img', ['info', '--output=json', ...qemuX509(x509)]);
  t.is((JSON.parse(stdout) as { 'virtual-size': number })['virtual-size'], sizeBytes);
  const io = await runOk('qemu-io', [...qemuX509(x509), '-c', 'write -P 0x5a 40m 1m', '-c', 'flush', '-c', 'read -P 0x5a 40m 1m',
    '-c', 'write -z 41m 64k', '-c', 'read -P 0 41m 64k']);
  t.notRegex(io.stdout + io.stderr, /Pattern verification failed|error/i);
  const image = path.join(dir, 'converted.img');
  await runOk('qemu-img', ['convert', '-O', 'raw', ...qemuX509(x509), image]);
  const copied = fs.readFileSync(image);
  t.true(copied.subarray(40 * 1024 * 1024, 41 * 1024 * 1024).every((byte) => byte === 0x5a), 'qemu-io\'s write came back through convert');
});

test.serial('pre-shared keys: nbdinfo, nbdcopy and qemu (tls-creds-psk)', async (t) => {
  const { stdout } = await runOk('nbdinfo', ['--json', pskUri()]);
  t.true((JSON.parse(stdout) as { TLS: boolean }).TLS);
  const source = path.join(dir, 'psk-source.img');
  writeRandomFile(source, 8 * 1024 * 1024, 22);
  await runOk('nbdcopy', [source, pskUri()]);
  const back = path.join(dir, 'psk-back.img');
  await runOk('nbdcopy', [pskUri(), back]);
  fs.truncateSync(back, 8 * 1024 * 1024);
  t.is(sha256File(back), sha256File(source));
  const info = await runOk('qemu-img', ['info', '--output=json', ...qemuPsk()]);
  t.is((JSON.parse(info.stdout) as { 'virtual-size': number })['virtual-size'], sizeBytes);
  const io = await runOk('qemu-io', [...qemuPsk(), '-c', 'write -P 0x33 1m 64k', '-c', 'read -P 0x33 1m 64k']);
  t.notRegex(io.stdout + io.stderr, /Pattern verification failed|error/i);
});

test.serial('tls on: a plaintext client and a TLS client are both served', async (t) => {
  const plain = await runOk('nbdinfo', ['--json', `nbd://127.0.0.1:${offered.port}/disk`]);
  t.false((JSON.parse(plain.stdout) as { TLS: boolean }).TLS);
  const secure = await runOk('nbdinfo', ['--json', `nbds://127.0.0.1:${offered.port}/disk?tls-certificates=${pki.anonymousClientDir}`]);
  t.true((JSON.parse(secure.stdout) as { TLS: boolean }).TLS, 'no client certificate needed without verify-peer');
  const io = await run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${offered.port}/disk`, '-c', 'write -P 0x44 0 64k', '-c', 'read -P 0x44 0 64k']);
  t.is(io.code, 0, io.stderr);
});

test.serial('Debian\'s nbd-client (the kernel client\'s negotiator) lists and negotiates GO over TLS', async (t) => {
  const tlsFlags = ['-cacertfile', path.join(pki.clientDir, 'ca-cert.pem'), '-certfile', path.join(pki.clientDir, 'client-cert.pem'),
    '-keyfile', path.join(pki.clientDir, 'client-key.pem'), '-tlshostname', 'localhost'];
  const listed = await run('nbd-client', ['-l', '127.0.0.1', String(x509.port), ...tlsFlags], { timeoutMs: 20_000 });
  t.is(listed.code, 0, listed.stderr);
  t.regex(listed.stdout, /^disk: /m);
  const attachedBefore = x509.logs.filter((entry) => entry.msg === 'client attached').length;
  // Negotiation finishes (GO inside TLS, "size = 64MB"); handing the socket to the kernel then fails: no such device (and no nbd.ko here).
  const attach = await run('nbd-client', ['127.0.0.1', String(x509.port), '/dev/nbd-no-such-device', '-N', 'disk', ...tlsFlags], { timeoutMs: 20_000 });
  t.regex(attach.stdout + attach.stderr, /size = 64MB/);
  // The server's log comes through its stdout, which can trail nbd-client's exit on a busy machine.
  const attachedCount = (): number => x509.logs.filter((entry) => entry.msg === 'client attached').length;
  await waitUntil(() => attachedCount() > attachedBefore, 5000, 20);
  t.is(attachedCount(), attachedBefore + 1, 'the server saw it attach');
});
