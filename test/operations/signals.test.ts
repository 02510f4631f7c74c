import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import test from 'ava';
import { cli } from '../helpers/cli.js';
import { startConfiguredMirror, tool } from '../helpers/operator.js';
import { projectRoot } from '../helpers/server-process.js';
import { makeTempDir } from '../helpers/tools.js';

interface Report { cleanShutdown: boolean | null; health: string }

async function cleanShutdown(dir: string): Promise<boolean | null> {
  return ((await tool(dir, ['status', '--json'])).json as Report).cleanShutdown;
}

test('SIGHUP reloads the log level and resync rate and never stops the server; SIGTERM afterwards is a clean stop', async (t) => {
  const dir = makeTempDir('ops-hup');
  const pidFile = path.join(dir, 'server.pid');
  const server = await startConfiguredMirror(dir, ['--pid-file', pidFile]);
  t.is(fs.readFileSync(pidFile, 'utf8').trim(), String(server.pid), '--pid-file holds the server\'s PID');
  const config = path.join(dir, 'config.yaml');
  fs.appendFileSync(config, 'log:\n  level: debug\n');
  fs.writeFileSync(config, fs.readFileSync(config, 'utf8').replace('  regionSize: 1MiB\n', '  regionSize: 1MiB\n  resyncRate: 32MiB\n'));
  process.kill(server.pid, 'SIGHUP');
  await new Promise((resolve) => setTimeout(resolve, 700));
  t.is(server.child.exitCode, null, 'still running after SIGHUP');
  const reloaded = server.logs.find((entry) => entry.msg?.toString().startsWith('settings reloaded'));
  t.is(reloaded?.logLevel, 'debug');
  t.is(reloaded?.resyncRate, 32 * 1024 * 1024);
  t.is(reloaded?.level, 'info', 'log levels are names, not numbers');
  const status = (await tool(dir, ['status'])).stdout;
  t.regex(status, /limit 32 MiB\/s/, 'the new resync rate is in force');
  const needRestart = (): Array<Record<string, unknown>> => server.logs.filter((entry) => String(entry.msg).includes('not applied until a restart'));
  t.deepEqual(needRestart(), [], 'only keys a reload applies changed');
  // A key only a restart applies: said by name, at warn, not silently ignored.
  fs.writeFileSync(config, fs.readFileSync(config, 'utf8').replace('  unix: nbd.sock', '  unix: other.sock'));
  process.kill(server.pid, 'SIGHUP');
  await new Promise((resolve) => setTimeout(resolve, 700));
  t.deepEqual(needRestart().map((entry) => entry.keys), [['listen.unix']]);
  t.is(needRestart()[0]?.level, 'warn');
  t.is(await server.stop(), 0);
  t.true(await cleanShutdown(dir), 'the log says the stop was clean');
  t.false(fs.existsSync(pidFile), 'the PID file goes with a clean stop');
  fs.rmSync(dir, { recursive: true, force: true });
});

test('Ctrl-C forwarded twice at once (terminal and npm) is one clean stop', async (t) => {
  const dir = makeTempDir('ops-int');
  const server = await startConfiguredMirror(dir);
  process.kill(server.pid, 'SIGINT');
  process.kill(server.pid, 'SIGINT');
  t.is(await server.exited, 0);
  t.true(await cleanShutdown(dir));
  fs.rmSync(dir, { recursive: true, force: true });
});

test('SIGTERM to the PID of `npm start` stops the server it started, cleanly', async (t) => {
  const dir = makeTempDir('ops-npm');
  const dataDir = path.join(dir, 'data');
  // The README's command, as a user runs it, with a data folder of the test's own. --ignore-scripts skips only
  // prestart (the build), which would rewrite dist/ under the tests running beside this one.
  const npm = spawn('npm', ['start', '--ignore-scripts', '--', '-d', dataDir, '--size', '64MiB', '--no-tcp'], {
    cwd: projectRoot, env: { ...process.env, NBD_MIRROR_LOG_JSON: '1' }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let serverPid: number | undefined;
  const listening = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('npm start did not reach "listening"')), 120_000);
    readline.createInterface({ input: npm.stdout! }).on('line', (line) => {
      if (!line.startsWith('{')) return;
      const entry = JSON.parse(line) as { msg?: string; pid?: number };
      if (entry.msg === 'listening') {
        serverPid = entry.pid;
        clearTimeout(timer);
        resolve();
      }
    });
  });
  try {
    await listening;
    t.truthy(serverPid);
    t.not(serverPid, npm.pid);
    npm.kill('SIGTERM');
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && fs.existsSync(`/proc/${serverPid}`)) await new Promise((resolve) => setTimeout(resolve, 100));
    t.false(fs.existsSync(`/proc/${serverPid}`), 'the server is gone, not left running with PPID 1');
  } finally {
    if (serverPid !== undefined && fs.existsSync(`/proc/${serverPid}`)) process.kill(serverPid, 'SIGKILL');
    if (npm.exitCode === null) npm.kill('SIGKILL');
  }
  const status = await cli(['status', '--json', '-d', dataDir]);
  t.true((JSON.parse(status.stdout) as Report).cleanShutdown, 'and it stopped cleanly');
  fs.rmSync(dir, { recursive: true, force: true });
});

test('offline status of a killed server says a resync is pending, not that one runs', async (t) => {
  const dir = makeTempDir('ops-killed');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const server = await startConfiguredMirror(dir);
  t.is((await cli(['resync', '--admin', path.join(dir, 'admin.sock')])).code, 0, 'every bit set, so the kill leaves them');
  await server.kill();
  const report = (await tool(dir, ['status', '--json'])).json as Report & { bitsSet: number };
  t.is(report.health, 'resync-pending');
  t.true(report.bitsSet > 0);
  const human = await tool(dir, ['status']);
  t.regex(human.stdout, /health: resync-pending \(the last server stopped uncleanly; the next start resyncs the \d+ regions whose bits are set\)/);
  t.is(human.code, 1, 'not optimal');
});
