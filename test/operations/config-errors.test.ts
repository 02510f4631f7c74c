import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import test from 'ava';
import { filesUnder } from '../helpers/operator.js';
import { cliPath, startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, run } from '../helpers/tools.js';

/** `serve ARGS` that must fail; its stderr, with the exit code checked and no stack trace allowed. */
async function refused(t: { is: (a: unknown, b: unknown, m?: string) => void; notRegex: (a: string, b: RegExp, m?: string) => void },
  args: string[], cwd: string): Promise<string> {
  const result = await run(process.execPath, [cliPath, 'serve', ...args], { cwd, timeoutMs: 30_000,
    env: { ...process.env, NBD_MIRROR_LOG_JSON: '1' } });
  t.is(result.code, 2, `serve ${args.join(' ')} must fail`);
  t.notRegex(result.stderr + result.stdout, /\n\s+at /, 'no stack trace');
  return result.stderr.trim();
}

const legsYaml = 'storage:\n  sizeBytes: 64MiB\n  log: m.log\n  legs:\n    - path: a.img\n    - path: b.img\n';

test('a host that does not resolve is found before anything is created, and named with its key and file', async (t) => {
  const dir = makeTempDir('cfg-host');
  fs.writeFileSync(path.join(dir, 'c.yaml'), `listen:\n  tcp: 999.1.1.1:10811\n${legsYaml}`);
  const message = await refused(t, ['-c', 'c.yaml'], dir);
  t.regex(message, /^nbd-mirror: .*c\.yaml: listen\.tcp: cannot resolve the host of 999\.1\.1\.1:10811/);
  t.deepEqual(filesUnder(dir), ['c.yaml'], 'no leg, no log');
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a port in use is found before a new mirror is created, and before an existing one\'s log is touched', async (t) => {
  const dir = makeTempDir('cfg-port');
  const holder = net.createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  const { port } = holder.address() as net.AddressInfo;
  try {
    fs.writeFileSync(path.join(dir, 'c.yaml'), `listen:\n  tcp: 127.0.0.1:${port}\n${legsYaml}`);
    t.regex(await refused(t, ['-c', 'c.yaml'], dir), new RegExp(`listen\\.tcp: 127\\.0\\.0\\.1:${port} is in use`));
    t.deepEqual(filesUnder(dir), ['c.yaml']);
    // An existing mirror: its log must not be written (no unclean mark, no events bump) by a start that cannot listen.
    const first = await startServerProcess(['-c', path.join(dir, 'c.yaml'), '--no-unix']);
    t.is(await first.stop(), 0);
    const log = fs.readFileSync(path.join(dir, 'm.log'));
    const legLabel = fs.readFileSync(path.join(dir, 'a.img')).subarray(-8192);
    await refused(t, ['-c', 'c.yaml'], dir);
    t.true(fs.readFileSync(path.join(dir, 'm.log')).equals(log), 'the region log is unchanged');
    t.true(fs.readFileSync(path.join(dir, 'a.img')).subarray(-8192).equals(legLabel), 'the leg label is unchanged');
  } finally {
    holder.close();
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

test('the log naming a leg\'s file, a duplicate leg and a size off the block size name the file and key, and create nothing', async (t) => {
  const dir = makeTempDir('cfg-keys');
  fs.writeFileSync(path.join(dir, 'log-is-leg.yaml'), 'storage:\n  log: a.img\n  legs:\n    - path: a.img\n    - path: b.img\n');
  t.regex(await refused(t, ['-c', 'log-is-leg.yaml'], dir), /log-is-leg\.yaml: storage\.log: .*a\.img is storage\.legs\[0\]\.path/);
  fs.writeFileSync(path.join(dir, 'twice.yaml'), 'storage:\n  log: m.log\n  legs:\n    - path: a.img\n    - path: ./a.img\n');
  t.regex(await refused(t, ['-c', 'twice.yaml'], dir), /twice\.yaml: storage\.legs\[1\]\.path: .*a\.img is already storage\.legs\[0\]\.path/);
  fs.writeFileSync(path.join(dir, 'odd.yaml'), `storage:\n  sizeBytes: 1000001\n  log: m.log\n  legs:\n    - path: a.img\n    - path: b.img\n`);
  t.regex(await refused(t, ['-c', 'odd.yaml'], dir), /odd\.yaml: storage\.sizeBytes: 1000001 must be a multiple of 4096/);
  t.regex(await refused(t, ['--leg', 'x.img', 'x.img', '--log', 'm.log'], dir), /command line: --leg: .*x\.img is already/);
  t.deepEqual(filesUnder(dir), ['log-is-leg.yaml', 'odd.yaml', 'twice.yaml']);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a flag\'s error names the flag; an over-indented YAML line is reported at that line; a port alone listens on 127.0.0.1', async (t) => {
  const dir = makeTempDir('cfg-flags');
  t.is(await refused(t, ['--size', 'lots', '-d', 'd'], dir), 'nbd-mirror: command line: --size: "lots" is not a size (examples: 4096, 64MiB, 1GiB)');
  t.regex(await refused(t, ['--listen', 'nowhere', '-d', 'd'], dir), /^nbd-mirror: command line: --listen: "nowhere" is not "host:port"/);
  fs.writeFileSync(path.join(dir, 'indent.yaml'), 'listen:\n  tcp: 127.0.0.1:10811\n   unix: x.sock\n');
  t.regex(await refused(t, ['-c', 'indent.yaml'], dir), /indent\.yaml: line 3: invalid YAML: indented deeper than line 2/);
  t.deepEqual(filesUnder(dir), ['indent.yaml'], 'no data folder for a refused flag');
  const server = await startServerProcess(['--leg', path.join(dir, 'p.img'), '--size', '4MiB', '--listen', '0']);
  try {
    t.is((server.logs.find((entry) => entry.msg === 'listening')?.tcp as { host: string }).host, '127.0.0.1');
  } finally {
    t.is(await server.stop(), 0);
  }
  fs.rmSync(dir, { recursive: true, force: true });
});
