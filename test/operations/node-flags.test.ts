import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { serverNodeFlags } from '../../sys/node-flags.js';
import { cliPath, projectRoot, startServerProcess } from '../helpers/server-process.js';
import { makeTempDir } from '../helpers/tools.js';

const binPath = path.join(projectRoot, 'bin', 'nbd-mirror.js');
const missingFlagWarning = /node was started without --no-memory-reducer/;

test('the launchers pass every flag the server needs: the bin\'s shebang and npm start', (t) => {
  const shebang = fs.readFileSync(binPath, 'utf8').split('\n')[0]!;
  const { scripts } = JSON.parse(fs.readFileSync(path.join(projectRoot, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  for (const flag of serverNodeFlags) {
    t.true(shebang.split(' ').includes(flag), `bin/nbd-mirror.js starts node with ${flag}`);
    t.true(scripts.start!.split(' ').includes(flag), `npm start starts node with ${flag}`);
  }
});

test('a server started through the bin runs with the flags; one started by plain node says what it lacks', async (t) => {
  const dir = makeTempDir('node-flags');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const args = ['--no-unix', '--size', '16MiB', '--leg', path.join(dir, 'a.img'), path.join(dir, 'b.img'), '--log', path.join(dir, 'm.log')];
  // The warning, when due, comes before "listening", which startServerProcess waits for.
  const throughBin = await startServerProcess(args, { launcher: [binPath] });
  await throughBin.stop();
  t.false(throughBin.logs.some((entry) => missingFlagWarning.test(String(entry.msg))), 'no warning through the bin');
  const plain = await startServerProcess(args, { launcher: [process.execPath, cliPath] });
  await plain.stop();
  const warning = plain.logs.find((entry) => missingFlagWarning.test(String(entry.msg)));
  t.truthy(warning, 'plain node: warned');
  t.deepEqual(warning?.missing, [...serverNodeFlags]);
});
