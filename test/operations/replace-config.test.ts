import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { startConfiguredMirror, tool, writeMirrorConfig } from '../helpers/operator.js';
import { cliPath, startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, run } from '../helpers/tools.js';

test('replace changes only the leg\'s path in config.yaml, in the form the user wrote, and keeps a backup', async (t) => {
  const dir = makeTempDir('ops-replace');
  const original = fs.readFileSync(writeMirrorConfig(dir), 'utf8');
  const server = await startConfiguredMirror(dir);
  try {
    const replaced = await tool(dir, ['replace', '1', path.join(dir, 'leg1-new.img'), '--wait']);
    t.is(replaced.code, 0, replaced.stderr);
    t.regex(replaced.stdout, /config\.yaml now names leg1-new\.img for leg 1 \(the previous file is kept as .*config\.yaml\.bak\)/);
  } finally {
    t.is(await server.stop(), 0);
  }
  const updated = fs.readFileSync(path.join(dir, 'config.yaml'), 'utf8');
  t.is(updated, original.replace('    - path: leg1.img   # second leg', '    - path: leg1-new.img   # second leg'),
    'one value changed, relative as written; comments and alignment kept');
  t.is(fs.readFileSync(path.join(dir, 'config.yaml.bak'), 'utf8'), original);
  const again = await startConfiguredMirror(dir);
  t.is(again.logs.find((entry) => entry.msg === 'listening')?.recoveryRegions, 0, 'the updated file starts the same mirror');
  t.is(await again.stop(), 0);
  // The data folder can still be moved: every path in the file is relative.
  const moved = `${dir}-moved`;
  fs.renameSync(dir, moved);
  const elsewhere = await startServerProcess(['-c', path.join(moved, 'config.yaml')]);
  t.is(await elsewhere.stop(), 0);
  fs.rmSync(moved, { recursive: true, force: true });
});

test('with a command-line server, replace says which --leg arguments to start with, and the old ones are refused without recommending --force', async (t) => {
  const dir = makeTempDir('ops-replace-cli');
  const args = ['--leg', 'a.img', 'b.img', '--log', 'm.log', '--size', '64MiB', '--admin', 'admin.sock'];
  const serve = (extra: string[]): Promise<Awaited<ReturnType<typeof startServerProcess>>> =>
    startServerProcess([...extra], { cwd: dir });
  const server = await serve(args);
  try {
    const replaced = await run(process.execPath, [cliPath, 'replace', '1', 'c.img', '--admin', 'admin.sock', '--wait'], { cwd: dir });
    t.is(replaced.code, 0, replaced.stderr);
    t.regex(replaced.stdout, /this server was started with --leg: start it next time with --leg a\.img c\.img/);
  } finally {
    t.is(await server.stop(), 0);
  }
  const old = await run(process.execPath, [cliPath, 'serve', '--listen', '127.0.0.1:0', ...args], { cwd: dir, timeoutMs: 30_000 });
  t.is(old.code, 2);
  t.regex(old.stderr, /leg 1 \(.*b\.img\) is leg .* but slot 1 of the log holds leg .*if slot 1 was replaced \(nbd-mirror replace\), the log expects the new leg's file: name it in place of/);
  t.notRegex(old.stderr, /^nbd-mirror: [^.]*\. Start with --force/, '--force is not the advice');
  const fixed = await serve(['--leg', 'a.img', 'c.img', '--log', 'm.log', '--admin', 'admin.sock']);
  t.is(fixed.logs.find((entry) => entry.msg === 'listening')?.recoveryRegions, 0);
  t.is(await fixed.stop(), 0);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('replace keeps the slot\'s fault-injection settings on the new leg', async (t) => {
  const dir = makeTempDir('ops-replace-faults');
  writeMirrorConfig(dir);
  const file = path.join(dir, 'config.yaml');
  fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace('    - path: leg1.img   # second leg\n',
    '    - path: leg1.img   # second leg\n      faults: { rules: [ { ops: [write], armed: false } ] }\n'));
  const server = await startConfiguredMirror(dir);
  try {
    t.is((await tool(dir, ['replace', '1', path.join(dir, 'leg1-new.img'), '--wait'])).code, 0);
    const { adminRequest } = await import('../../tools/admin-client.js');
    const answer = await adminRequest(path.join(dir, 'admin.sock'), { command: 'fault', slot: 1, action: 'heal' }) as { slot: number };
    t.is(answer.slot, 1, 'the new leg still has its fault injection');
  } finally {
    t.is(await server.stop(), 0);
  }
  fs.rmSync(dir, { recursive: true, force: true });
});
