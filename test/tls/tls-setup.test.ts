import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { cliPath, startServerProcess } from '../helpers/server-process.js';
import { makePki, makePskFile } from '../helpers/tls-files.js';
import { makeTempDir, run, runOk } from '../helpers/tools.js';

/** Credentials are checked before anything is bound or created, and every problem names its file. */
async function serveFails(args: string[]): Promise<string> {
  const result = await run(process.execPath, [cliPath, 'serve', ...args], { timeoutMs: 20_000 });
  if (result.code === 0) throw new Error('serve should have failed');
  return result.stderr;
}

test('bad TLS credentials and settings are refused at start-up with the file and the problem', async (t) => {
  const dir = makeTempDir('tls-setup');
  try {
    const [good, other, expired] = await Promise.all([makePki(dir, 'good'), makePki(dir, 'other'), makePki(dir, 'expired', { expiredServer: true })]);
    const variant = (name: string, change: (folder: string) => void): string => {
      const folder = path.join(dir, name);
      fs.cpSync(good.serverDir, folder, { recursive: true });
      change(folder);
      return folder;
    };
    const noKey = variant('no-key', (folder) => fs.rmSync(path.join(folder, 'server-key.pem')));
    const keyIsFolder = variant('key-folder', (folder) => {
      fs.rmSync(path.join(folder, 'server-key.pem'));
      fs.mkdirSync(path.join(folder, 'server-key.pem'));
    });
    const mismatched = variant('mismatched', (folder) => fs.copyFileSync(path.join(other.serverDir, 'server-key.pem'), path.join(folder, 'server-key.pem')));
    const garbage = variant('garbage', (folder) => fs.writeFileSync(path.join(folder, 'server-cert.pem'), 'not a certificate\n'));
    const noCa = variant('no-ca', (folder) => fs.rmSync(path.join(folder, 'ca-cert.pem')));
    const pskFile = await makePskFile(path.join(dir, 'keys.psk'), 'alice');
    const badPsk = path.join(dir, 'bad.psk');
    fs.writeFileSync(badPsk, 'alice:nothex\n');
    const emptyPsk = path.join(dir, 'empty.psk');
    fs.writeFileSync(emptyPsk, '\n');
    const leg = ['--leg', path.join(dir, 'leg.img'), '--size', '16MiB', '--no-unix'];
    const cases: Array<[string[], RegExp]> = [
      [['--tls', 'require'], /tls\.certificates: is required with tls\.mode require/],
      [['--tls', 'on', '--tls-certificates', path.join(dir, 'nowhere')], /command line: --tls-certificates: .*nowhere: does not exist/],
      [['--tls', 'on', '--tls-certificates', noKey], /no-key\/server-key\.pem: does not exist/],
      [['--tls', 'on', '--tls-certificates', keyIsFolder], /server-key\.pem: is a folder, not a file/],
      [['--tls', 'on', '--tls-certificates', mismatched], /mismatched\/server-key\.pem does not match the key of server-cert\.pem/],
      [['--tls', 'on', '--tls-certificates', expired.serverDir], /server-cert\.pem expired on 2020-01-01/],
      [['--tls', 'on', '--tls-certificates', garbage], /garbage\/server-cert\.pem is not a PEM certificate/],
      [['--tls', 'on', '--tls-certificates', noCa, '--tls-verify-peer'], /no-ca\/ca-cert\.pem: does not exist/],
      [['--tls', 'on', '--tls-psk', path.join(dir, 'missing.psk')], /command line: --tls-psk: .*missing\.psk: does not exist/],
      [['--tls', 'on', '--tls-psk', badPsk], /command line: --tls-psk: .*bad\.psk line 1: the key of alice is not an even number of hex digits/],
      [['--tls', 'on', '--tls-psk', emptyPsk], /empty\.psk holds no keys/],
      [['--tls', 'on', '--tls-psk', pskFile, '--tls-certificates', good.serverDir], /--tls-psk: and tls\.certificates are both set/],
      [['--tls', 'on', '--tls-psk', pskFile, '--tls-verify-peer'], /command line: --tls-verify-peer: applies to x509 certificates/],
      [['--tls-certificates', good.serverDir], /tls\.mode: is off, but credentials are given/],
      [['--tls', 'maybe'], /--tls.*maybe.*(invalid|Allowed choices)/i],
      [['--allow', '10.0.0.0/33'], /--allow: "10\.0\.0\.0\/33" has a prefix length outside 0\.\.32/],
      [['--allow', '127.0.0.1,localhost'], /--allow: "localhost" is not an address or network/],
      [['--negotiating-max', '0'], /--negotiating-max: 0 is outside 1\.\.65536/],
    ];
    for (const [args, expected] of cases) t.regex(await serveFails([...leg, ...args]), expected, args.join(' '));
    t.false(fs.existsSync(path.join(dir, 'leg.img')), 'nothing is created when the credentials are refused');

    const config = path.join(dir, 'config.yaml');
    fs.writeFileSync(config, ['listen:', '  tcp: 127.0.0.1:0', '  unix: null', '  allow: [127.0.0.0/8]',
      'tls:', '  mode: require', `  certificates: ${path.relative(dir, good.serverDir)}`, '  verifyPeer: true',
      'storage:', '  sizeBytes: 16MiB', '  legs:', '    - path: from-yaml.img', ''].join('\n'));
    const badYaml = path.join(dir, 'bad.yaml');
    fs.writeFileSync(badYaml, 'listen:\n  allow: [127.0.0.1, "10.0.0.0/8/8"]\ntls:\n  mode: off\nstorage:\n  legs:\n    - path: a.img\n');
    t.regex(await serveFails(['--config', badYaml]), /bad\.yaml: listen\.allow\[1\]: "10\.0\.0\.0\/8\/8" is not an address or network/);
    fs.writeFileSync(badYaml, 'tls:\n  mode: maybe\nstorage:\n  legs:\n    - path: a.img\n');
    t.regex(await serveFails(['--config', badYaml]), /bad\.yaml: tls\.mode: must be one of off, on, require/);
    const fromYaml = await startServerProcess(['--config', config], {});
    try {
      const { stdout } = await runOk('nbdinfo', ['--size', `nbds://127.0.0.1:${fromYaml.port}/?tls-certificates=${good.clientDir}`]);
      t.is(stdout.trim(), String(16 * 1024 * 1024), 'tls settings from YAML, the folder relative to the file');
      t.true(fromYaml.logs.some((entry) => /^attach with: nbdinfo 'nbds:\/\/127\.0\.0\.1:\d+\/\?tls-certificates=CLIENT-DIR'/.test(String(entry.msg))), 'the attach hint says nbds://');
    } finally {
      await fromYaml.stop();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
