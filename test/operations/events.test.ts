import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import test from 'ava';
import { startConfiguredMirror, tool } from '../helpers/operator.js';
import { cliPath } from '../helpers/server-process.js';
import { makeTempDir, runOk } from '../helpers/tools.js';

interface Watcher { child: ChildProcess; lines: Array<Record<string, unknown>>; ready: Promise<void> }

/** Runs `nbd-mirror events ARGS` and collects its lines; ready once the --now snapshot ended (or the first line came). */
function watch(dir: string, args: string[]): Watcher {
  const child = spawn(process.execPath, [cliPath, 'events', '-c', path.join(dir, 'config.yaml'), '--now', ...args],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: Array<Record<string, unknown>> = [];
  const ready = new Promise<void>((resolve) => {
    readline.createInterface({ input: child.stdout! }).on('line', (line) => {
      const event = JSON.parse(line) as Record<string, unknown>;
      lines.push(event);
      if (event.event === 'exists' && event.object === '-') resolve();
    });
  });
  return { child, lines, ready };
}

/** What an operator's state-change hook sees: events without the client comings and goings. */
function stateChanges(lines: Array<Record<string, unknown>>): string[] {
  return lines.filter((line) => line.event !== 'exists' && !String(line.event).startsWith('client-') && line.event !== 'sweep')
    .map((line) => `${String(line.event)}${line.slot === undefined ? '' : ` ${String(line.slot)}`}${line.kind === undefined ? '' : ` ${String(line.kind)}`}`);
}

const expected = ['leg-faulty 1', 'leg-rebuilding 1', 'resync-started re-add', 'resync-finished re-add', 'leg-in-sync 1', 'check-finished'];

test('fail, re-add and check produce the exact event sequence, from `events` and from an --exec hook', async (t) => {
  const dir = makeTempDir('ops-events');
  const hookLog = path.join(dir, 'hook.log');
  const hook = path.join(dir, 'hook.sh');
  fs.writeFileSync(hook, `#!/bin/sh\necho "$NBD_MIRROR_EVENT\${NBD_MIRROR_SLOT:+ $NBD_MIRROR_SLOT}\${NBD_MIRROR_KIND:+ $NBD_MIRROR_KIND} $1" >> ${hookLog}\n`,
    { mode: 0o755 });
  const server = await startConfiguredMirror(dir, ['--sweep-interval-ms', '0']);
  const plain = watch(dir, []);
  const hooked = watch(dir, ['--exec', hook]);
  try {
    await Promise.all([plain.ready, hooked.ready]);
    t.deepEqual(plain.lines.filter((line) => line.object === 'leg').map((line) => line.state), ['in_sync', 'in_sync'], '--now: the current state first');
    t.is((await tool(dir, ['fail', '1'])).code, 0);
    // Written while leg 1 is away: the re-add has a region to copy.
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x61 0 64k', '-c', 'flush', server.uri()]);
    t.is((await tool(dir, ['re-add', '1', '--wait'])).code, 0);
    t.is((await tool(dir, ['check'])).code, 0);
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && (stateChanges(plain.lines).length < expected.length ||
      (fs.existsSync(hookLog) ? fs.readFileSync(hookLog, 'utf8').trim().split('\n').filter((line) => !line.startsWith('client-')).length : 0) <
        expected.length)) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    t.deepEqual(stateChanges(plain.lines), expected);
    const check = plain.lines.find((line) => line.event === 'check-finished')!;
    t.is(check.mismatches, 0);
    t.true(check.compared as boolean);
    t.true(plain.lines.every((line, index) => index === 0 || line.event === 'exists' || typeof line.seq === 'number'), 'numbered');
    // The hook gets each event in its environment (and its name as the first argument), in order.
    const hookLines = fs.readFileSync(hookLog, 'utf8').trim().split('\n');
    t.deepEqual(hookLines.filter((line) => !line.startsWith('client-')).map((line) => line.split(' ').slice(0, -1).join(' ')), expected);
    t.true(hookLines.some((line) => line.startsWith('client-attached')), 'client comings and goings reach the hook too');
    t.true(hookLines.every((line) => line.split(' ')[0] === line.split(' ').at(-1)));
  } finally {
    t.is(await server.stop(), 0);
  }
  const ends = await Promise.all([plain.child, hooked.child].map((child) => new Promise((resolve) => {
    if (child.exitCode !== null) resolve(child.exitCode);
    else child.once('exit', resolve);
  })));
  t.deepEqual(ends, [0, 0], 'the stream ends with the server');
  fs.rmSync(dir, { recursive: true, force: true });
});
