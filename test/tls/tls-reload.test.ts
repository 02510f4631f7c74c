import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { attachTlsClient, RawClient, READ } from '../helpers/raw-client.js';
import { type ServerProcess, startServerProcess } from '../helpers/server-process.js';
import { makePki, type Pki } from '../helpers/tls-files.js';
import { makeTempDir, run } from '../helpers/tools.js';

/**
 * Certificates are renewed and allow lists edited without a restart:
 * SIGHUP applies them to clients that connect from then on, while clients
 * already attached keep their TLS session and are not ended.
 */
const sizeBytes = 16 * 1024 * 1024;

function installServerFiles(from: Pki, certificates: string): void {
  for (const file of ['ca-cert.pem', 'server-cert.pem', 'server-key.pem']) {
    fs.copyFileSync(path.join(from.serverDir, file), path.join(certificates, file));
  }
}

async function served(server: ServerProcess, clientDir: string): Promise<boolean> {
  const result = await run('nbdinfo', ['--size', `nbds://127.0.0.1:${server.port}/?tls-certificates=${clientDir}`]);
  return result.code === 0 && result.stdout.trim() === String(sizeBytes);
}

async function reload(server: ServerProcess, outcome: RegExp): Promise<Record<string, unknown> | undefined> {
  const seen = server.logs.length;
  process.kill(server.pid, 'SIGHUP');
  for (const deadline = Date.now() + 5000; Date.now() < deadline;) {
    const entry = server.logs.slice(seen).find((line) => outcome.test(String(line.msg)));
    if (entry !== undefined) return entry;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return undefined;
}

async function readsStill(client: RawClient, cookie: bigint): Promise<boolean> {
  await client.request(READ, { cookie, offset: 0n, length: 4096 });
  const reply = await client.readSimpleReply();
  await client.read(4096);
  return reply.error === 0 && reply.cookie === cookie;
}

test('SIGHUP renews the certificate and the allow list for new clients; attached ones keep going', async (t) => {
  const dir = makeTempDir('tls-reload');
  const [before, after] = await Promise.all([makePki(dir, 'before'), makePki(dir, 'after')]);
  const certificates = path.join(dir, 'certificates');
  fs.mkdirSync(certificates);
  installServerFiles(before, certificates);
  const config = path.join(dir, 'config.yaml');
  const write = (allow: string): void => fs.writeFileSync(config, ['listen:', '  unix: null', `  allow: ${allow}`,
    'tls:', '  mode: require', '  certificates: certificates', 'storage:', `  sizeBytes: ${sizeBytes}`,
    '  legs:', '    - path: leg.img', ''].join('\n'));
  write('null');
  const server = await startServerProcess(['--config', config]);
  let attached: RawClient | undefined;
  try {
    t.true(await served(server, before.clientDir));
    attached = await attachTlsClient(server.port, { ca: fs.readFileSync(before.caCert), servername: 'localhost' });
    t.true(await readsStill(attached, 1n));

    installServerFiles(after, certificates);
    t.truthy(await reload(server, /^settings reloaded/));
    t.true(await served(server, after.clientDir), 'a new client gets the renewed certificate');
    t.false(await served(server, before.clientDir), 'and no longer the old one');
    t.true(await readsStill(attached, 2n), 'the client attached before keeps its session');

    // A half-done renewal (a key that does not match) is refused whole: the running credentials stay.
    fs.copyFileSync(path.join(before.serverDir, 'server-key.pem'), path.join(certificates, 'server-key.pem'));
    const refused = await reload(server, /^reload refused/);
    t.regex(String(refused?.err), /server-key\.pem does not match the key of server-cert\.pem/);
    t.true(await served(server, after.clientDir), 'still served with the credentials that checked out');
    installServerFiles(after, certificates);

    write('[127.0.0.2]');
    t.truthy(await reload(server, /^settings reloaded/));
    const stranger = await RawClient.connect(server.port);
    await t.throwsAsync(stranger.read(18, 3000), { message: /closed/ }, '127.0.0.1 is no longer allowed');
    const listed = await RawClient.connect(server.port, '127.0.0.2');
    t.is((await listed.read(18)).toString('latin1', 0, 8), 'NBDMAGIC', '127.0.0.2 is');
    listed.destroy();
    t.true(await readsStill(attached, 3n), 'an attached client is not ended by a tightened allow list');
  } finally {
    attached?.destroy();
    await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
