import test, { type ExecutionContext } from 'ava';
import { cliPath } from '../helpers/server-process.js';
import { run } from '../helpers/tools.js';

/**
 * The fixed-seed sweep CI runs on every change: the real `nbd-mirror
 * crash-test` command, real clients (libnbd, fio, nbdfuse + ext4), real
 * kill -9s, crash points and power cuts. A failing iteration prints its
 * seed and how to rerun it.
 */
const seed = process.env.CRASH_TEST_SEED ?? '20261121';
const rawIterations = Number(process.env.CRASH_TEST_RAW_ITERATIONS ?? 72);

async function crashTest(t: { log(message: string): void }, args: string[], timeoutMs: number) {
  const result = await run(process.execPath, [cliPath, 'crash-test', '--seed', seed, ...args], { timeoutMs });
  const table = result.stdout.slice(result.stdout.lastIndexOf('\nseed '));
  t.log(table.trim());
  return result;
}

/**
 * One sweep over every crash kind and leg fault with the cache on and off:
 * it must exit cleanly with every iteration recovered. Returns the output and
 * its "by workload/crash" summary for the caller's own checks.
 */
async function sweep(t: ExecutionContext, workloads: string, iterations: number, timeoutMs: number):
  Promise<{ stdout: string; summary: string }> {
  const result = await crashTest(t, ['--iterations', String(iterations), '--workloads', workloads, '--crashes', 'kill,point,power-cut',
    '--faults', 'none,leg-eio,leg-enospc', '--cache', 'mixed'], timeoutMs);
  t.is(result.code, 0, result.stdout.split('\n').filter((line) => line.includes('FAIL')).join('\n') + result.stderr);
  t.regex(result.stdout, new RegExp(`seed ${seed}: ${iterations} crashes, ${iterations} recoveries, 0 failing`));
  return { stdout: result.stdout, summary: /by workload\/crash: (.*)/.exec(result.stdout)?.[1] ?? '' };
}

test('raw workload: a few dozen kill -9s, crash points and power cuts, with leg faults and the cache on and off', async (t) => {
  t.timeout(15 * 60_000);
  const { stdout, summary } = await sweep(t, 'raw', rawIterations, 14 * 60_000);
  for (const kind of ['raw/kill', 'raw/point', 'raw/power-cut']) t.regex(summary, new RegExp(`${kind} (\\d+)/\\1 pass`));
  const struck = /crash points: (\d+) of (\d+) struck/.exec(stdout);
  t.true(struck !== null && Number(struck[1]) > 0, `named crash points must really strike: ${struck?.[0] ?? 'no summary'}`);
  // Invariant 6 (no checkpoint reports a changed block clean) runs from the second iteration on.
  t.is([...stdout.matchAll(/invariants 1:\w+ 2:\w+ 3:\w+ 4:\w+ 5:[\w/]+ 6:pass/g)].length, rawIterations - 1, 'every checkpoint checked passed');
});

const clientIterations = Number(process.env.CRASH_TEST_CLIENT_ITERATIONS ?? 36);

test('fio and ext4 through real clients (fio nbd engine, nbdfuse + loop + ext4) survive crashes, leg faults and the cache', async (t) => {
  t.timeout(12 * 60_000);
  const { stdout, summary } = await sweep(t, 'fio,ext4', clientIterations, 11 * 60_000);
  for (const workload of ['fio', 'ext4']) t.regex(summary, new RegExp(`${workload}/(kill|point|power-cut) \\d+/\\d+ pass`));
  // A crash can come before the first file, but a full filesystem stops every writer at once.
  const writers = [...stdout.matchAll(/ext4 writer: (\d+) files fsynced before the crash/g)].map((match) => Number(match[1]));
  t.true(writers.length > 0 && writers.filter((count) => count > 0).length * 2 >= writers.length,
    `most ext4 writers must fsync files before their crash: ${writers.join(', ')}`);
});

const remoteIterations = Number(process.env.CRASH_TEST_REMOTE_ITERATIONS ?? 12);

test('a remote leg (another server process behind a fault proxy): crashes of the primary with the link cut or stalled or the remote restarted mid-workload; the leg comes back by itself every time', async (t) => {
  t.timeout(8 * 60_000);
  const result = await crashTest(t, ['--iterations', String(remoteIterations), '--workloads', 'raw', '--crashes', 'kill,point,power-cut',
    '--faults', 'link-cut,link-stall,remote-restart', '--cache', 'mixed', '--remote-leg'], 7 * 60_000);
  t.is(result.code, 0, result.stdout.split('\n').filter((line) => line.includes('FAIL')).join('\n') + result.stderr);
  t.regex(result.stdout, new RegExp(`seed ${seed}: ${remoteIterations} crashes, ${remoteIterations} recoveries, 0 failing`));
  t.regex(result.stdout, /remote leg1: .* served by another nbd-mirror process/);
  t.regex(result.stdout, /fault link-cut on leg1/);
  t.regex(result.stdout, /fault link-stall on leg1/);
  t.regex(result.stdout, /fault remote-restart on leg1/);
  t.is([...result.stdout.matchAll(/leg1 \(remote\) in sync by itself/g)].length, remoteIterations, 'every iteration ends with the leg back by itself');
  t.notRegex(result.stdout, /re-added, \d+ regions resynced/, 'the harness never re-adds the remote leg');
});

test('--replay rebuilds each leg at every flush and FUA mark from its write log, and every state keeps its promises', async (t) => {
  t.timeout(5 * 60_000);
  const result = await crashTest(t, ['--iterations', '4', '--workloads', 'raw', '--crashes', 'kill,power-cut', '--replay'], 4 * 60_000);
  t.is(result.code, 0, result.stdout.slice(-2000) + result.stderr);
  const marks = [...result.stdout.matchAll(/replay leg(\d): (\d+) flush\/FUA marks checked, every state consistent/g)];
  t.is(marks.length, 2, result.stdout.slice(-1000));
  for (const match of marks) t.true(Number(match[2]) > 50, `leg${match[1]}: ${match[2]} marks`);
});
