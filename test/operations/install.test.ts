import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { projectRoot } from '../helpers/server-process.js';
import { makeTempDir, run } from '../helpers/tools.js';

test('npm install -g puts nbd-mirror on PATH, and the systemd unit verifies against it', async (t) => {
  const prefix = makeTempDir('install');
  // What the README tells users (npm install -g .), into a prefix of the test's own instead of /usr/local.
  const install = await run('npm', ['install', '-g', '--prefix', prefix, '--ignore-scripts', '--no-audit', '--no-fund', projectRoot],
    { timeoutMs: 120_000 });
  t.is(install.code, 0, install.stderr);
  const command = path.join(prefix, 'bin', 'nbd-mirror');
  const env = { ...process.env, PATH: `${path.join(prefix, 'bin')}:${process.env.PATH ?? ''}` };
  const version = await run('nbd-mirror', ['--version'], { env, cwd: prefix });
  t.is(version.code, 0, version.stderr);
  const { version: expected } = JSON.parse(fs.readFileSync(path.join(projectRoot, 'package.json'), 'utf8')) as { version: string };
  t.is(version.stdout.trim(), expected);
  t.is((await run('nbd-mirror', ['status'], { env, cwd: prefix })).code, 4, 'a working command: no mirror here');
  const verify = await run('sh', ['-c', 'command -v systemd-analyze'], {});
  if (verify.code !== 0) {
    t.log('systemd-analyze is not installed: the unit file was not verified');
    return;
  }
  const unit = path.join(prefix, 'nbd-mirror.service');
  fs.writeFileSync(unit, fs.readFileSync(path.join(projectRoot, 'contrib', 'nbd-mirror.service'), 'utf8')
    .replaceAll('/usr/local/bin/nbd-mirror', command));
  const verified = await run('systemd-analyze', ['verify', unit], { env });
  t.is(verified.code, 0, verified.stderr + verified.stdout);
  t.is(verified.stderr.trim(), '', 'no warnings');
  fs.rmSync(prefix, { recursive: true, force: true });
});
