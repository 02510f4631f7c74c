import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { cli } from '../helpers/cli.js';
import { filesUnder, startConfiguredMirror, tool } from '../helpers/operator.js';
import { cliPath } from '../helpers/server-process.js';
import { makeTempDir, run, runOk } from '../helpers/tools.js';

interface Report {
  source: string;
  health: string;
  legs: Array<{ slot: number; state: string; failedAt: string | null }>;
  regions: { outOfSync: number } | null;
  resync: { kind: string; running: boolean; regionsDone: number; regionsTotal: number } | null;
  lastCheck: { compared: boolean; mismatches: number } | null;
}

test('resync --wait returns only once the resync it asked for has finished, and prints the final state', async (t) => {
  const dir = makeTempDir('ops-resync');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // 64 regions at 16 MiB/s: the resync takes about four seconds, far longer than the request.
  const server = await startConfiguredMirror(dir, [], 'cache: { enabled: false }\n');
  try {
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 32M', server.uri()]);
    t.is((await tool(dir, ['resync-rate', '16MiB'])).code, 0);
    const started = Date.now();
    const waited = await tool(dir, ['resync', '--wait']);
    const tookMs = Date.now() - started;
    t.is(waited.code, 0, waited.stderr);
    t.regex(waited.stdout, /all 64 regions marked for resync/);
    t.regex(waited.stdout, /resync finished/);
    t.regex(waited.stdout, /resync: idle; last: resync finished .* 64\/64 regions/, 'the final state, and the user\'s resync is called a resync');
    const report = (await tool(dir, ['status', '--json'])).json as Report;
    t.false(report.resync!.running, 'nothing is running once --wait returned');
    t.is(report.regions!.outOfSync, 0);
    t.true(tookMs > 1500, `the wait lasted the resync (${tookMs} ms)`);
  } finally {
    t.is(await server.stop(), 0);
  }
});

test('read-only tools in a folder with no mirror create nothing and say where they looked (exit 4)', async (t) => {
  const dir = makeTempDir('ops-empty');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const args of [['status'], ['check'], ['resync'], ['re-add', '1'], ['pool', 'grow', '--by', '1MiB'], ['repair'], ['fail', '1']]) {
    const result = await cliIn(dir, args);
    t.is(result.code, 4, `${args.join(' ')}: ${result.stderr}`);
    t.is(result.stderr.trim(), 'nbd-mirror: no mirror configured in ./data; use -c or -d', args.join(' '));
  }
  const unreachable = await cliIn(dir, ['status', '--admin', 'admin.sock']);
  t.is(unreachable.code, 4);
  t.regex(unreachable.stderr, /no server answers on the admin socket .*admin\.sock/);
  t.deepEqual(filesUnder(dir), [], 'no file was created');
});

function cliIn(cwd: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return run(process.execPath, [cliPath, ...args], { cwd, timeoutMs: 30_000 });
}

test('status exit codes follow mdadm --detail --test, and --json has one schema online and offline', async (t) => {
  const dir = makeTempDir('ops-status');
  const server = await startConfiguredMirror(dir);
  let online: Report;
  try {
    const optimal = await tool(dir, ['status', '--json']);
    t.is(optimal.code, 0);
    online = optimal.json as Report;
    t.is(online.source, 'server');
    const failed = await tool(dir, ['fail', '1']);
    t.is(failed.code, 0, failed.stderr);
    t.regex(failed.stdout, /leg 1 .* marked faulty/);
    const degraded = await tool(dir, ['status']);
    t.is(degraded.code, 1, 'degraded: exit 1');
    t.regex(degraded.stdout, /health: degraded/);
    t.regex(degraded.stdout, /leg 1: faulty .* failed at /);
    const last = await tool(dir, ['fail', '0']);
    t.not(last.code, 0);
    t.regex(last.stderr, /^nbd-mirror: leg 0 is the last in-sync leg/, 'one prefix, and the last leg is kept');
    const check = await tool(dir, ['check']);
    t.is(check.code, 2, 'a check with one in-sync leg compares nothing');
    t.regex(check.stdout, /nothing compared: only leg 0 is in sync/);
    t.notRegex(check.stdout, /mismatch_cnt 0/);
    const readded = await tool(dir, ['re-add', '1', '--wait']);
    t.is(readded.code, 0, readded.stderr);
    t.regex(readded.stdout, /re-add finished/);
    const back = (await tool(dir, ['status', '--json'])).json as Report;
    t.is(back.legs[1].state, 'in_sync');
    t.is(back.legs[1].failedAt, null, 'a leg back in sync shows no failure time');
    t.notRegex((await tool(dir, ['status'])).stdout, /failed at/);
    t.is((await tool(dir, ['check'])).code, 0);
    const kept = (await tool(dir, ['status', '--json'])).json as Report;
    t.deepEqual(kept.lastCheck && { compared: kept.lastCheck.compared, mismatches: kept.lastCheck.mismatches }, { compared: true, mismatches: 0 },
      'the last check\'s mismatch count is kept in status');
  } finally {
    t.is(await server.stop(), 0);
  }
  const offline = await tool(dir, ['status', '--json']);
  t.is(offline.code, 0, offline.stderr);
  const files = offline.json as Report;
  t.is(files.source, 'files');
  t.deepEqual(Object.keys(files).sort(), Object.keys(online!).sort(), 'the same fields online and offline');
  t.deepEqual(Object.keys(files.legs[0]).sort(), Object.keys(online!.legs[0]).sort());
  fs.renameSync(path.join(dir, 'leg0.img'), path.join(dir, 'leg0.moved'));
  fs.renameSync(path.join(dir, 'leg1.img'), path.join(dir, 'leg1.moved'));
  const gone = await tool(dir, ['status']);
  t.is(gone.code, 2, 'no usable leg: failed, exit 2');
  t.regex(gone.stdout, /health: failed/);
  t.is((await cli(['status', '-c', path.join(dir, 'missing.yaml')])).code, 4, 'no such configuration: exit 4');
  fs.rmSync(dir, { recursive: true, force: true });
});

test('fail, remove and replace: a removed slot is empty until replace fills it; --version; one message prefix', async (t) => {
  const dir = makeTempDir('ops-remove');
  const server = await startConfiguredMirror(dir);
  try {
    t.regex((await tool(dir, ['remove', '1'])).stderr, /^nbd-mirror: leg 1 is in_sync; only a faulty leg can be removed/);
    t.is((await tool(dir, ['fail', '1'])).code, 0);
    const removed = await tool(dir, ['remove', '1']);
    t.is(removed.code, 0, removed.stderr);
    t.regex(removed.stdout, /leg 1 .* removed/);
    t.regex((await tool(dir, ['re-add', '1'])).stderr, /leg 1 is empty/);
    const replaced = await tool(dir, ['replace', '1', path.join(dir, 'leg1-new.img'), '--wait']);
    t.is(replaced.code, 0, replaced.stderr);
    t.regex(replaced.stdout, /rebuild finished/);
    t.regex(replaced.stdout, /health: optimal/);
  } finally {
    t.is(await server.stop(), 0);
  }
  const repair = await tool(dir, ['repair']);
  t.is(repair.code, 4);
  t.regex(repair.stderr, /^nbd-mirror: repair runs against a running server/);
  t.notRegex(repair.stderr, /nbd-mirror: nbd-mirror/);
  const version = await cli(['--version']);
  const { version: expected } = JSON.parse(fs.readFileSync('package.json', 'utf8')) as { version: string };
  t.is(version.stdout.trim(), expected);
  fs.rmSync(dir, { recursive: true, force: true });
});
