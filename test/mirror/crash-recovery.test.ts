import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { adminRequest } from '../../tools/admin-client.js';
import { hammerScript } from '../helpers/cli.js';
import { legsIdentical } from '../helpers/mirror-fixture.js';
import { startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, run } from '../helpers/tools.js';
import { waitUntil } from '../helpers/wait.js';

/**
 * The dm-raid1 scenario: two connections hammer the same blocks while the
 * sweeper runs every 100 ms; the server is killed with SIGKILL at a random
 * moment; after restart and recovery the legs must be byte-identical.
 */
const iterations = Number(process.env.MIRROR_CRASH_ITERATIONS ?? 8);
const sizeBytes = 64 * 1024 * 1024;
const hotBytes = 8 * 1024 * 1024;

function mirrorArgs(dir: string): string[] {
  return ['--leg', path.join(dir, 'leg0.img'), path.join(dir, 'leg1.img'), '--log', path.join(dir, 'mirror.log'),
    '--admin', path.join(dir, 'admin.sock'), '--size', String(sizeBytes), '--region-size', '256KiB',
    '--sweep-interval-ms', '100', '--no-unix'];
}

interface Status { regions: { outOfSync: number; bitsSet: number }; health: string; resync: { regionsTotal: number } }

test(`kill -9 under overlapping writes from two connections, ${iterations} seeded crashes: legs identical after recovery`, async (t) => {
  const dir = makeTempDir('crash-');
  const admin = path.join(dir, 'admin.sock');
  const seeds: number[] = [];
  for (let iteration = 0; iteration < iterations; iteration += 1) {
    const seed = 4242 + iteration;
    seeds.push(seed);
    const server = await startServerProcess(mirrorArgs(dir));
    const recovered = server.logs.find((entry) => entry.msg === 'listening')?.recoveryRegions as number;
    if (iteration > 0) {
      const recovery = await adminRequest(admin, { command: 'wait-resync' }) as Status;
      t.is(recovery.regions.outOfSync, 0);
      const check = await adminRequest(admin, { command: 'check' }) as { mismatchedRegions: number[] };
      t.deepEqual(check.mismatchedRegions, [], `after the crash of seed ${seed - 1}, legs differ`);
      t.log(`seed ${seed - 1}: recovery resynced ${recovered} of ${sizeBytes / (256 * 1024)} regions; check: 0 mismatches`);
    }
    const progressed = path.join(dir, `progress-${seed}`);
    const hammer = run('/usr/bin/python3', [hammerScript, server.uri(), String(seed), '30', String(hotBytes), progressed], { timeoutMs: 60_000 });
    // Crash somewhere between 0.3 and 1.5 s into the workload, mid-sweep or not: timed from its first completed
    // request, since python and libnbd can take longer than 0.3 s to start on a loaded machine.
    t.true(await waitUntil(() => fs.existsSync(progressed), 20_000, 10), `seed ${seed}: no request completed within 20 s`);
    await new Promise((resolve) => setTimeout(resolve, 300 + ((seed * 7919) % 1200)));
    await server.kill();
    const result = await hammer;
    t.is(result.code, 0, `hammer: ${result.stderr}`);
    t.true(Number(result.stdout.trim()) > 0, 'the workload made progress before the crash');
  }
  // A final start recovers the last crash; wait for resync, then stop cleanly and compare the files.
  const server = await startServerProcess(mirrorArgs(dir));
  const status = await adminRequest(admin, { command: 'wait-resync' }) as Status;
  t.is(status.regions.outOfSync, 0);
  t.is(await server.stop(), 0);
  const comparison = legsIdentical([path.join(dir, 'leg0.img'), path.join(dir, 'leg1.img')], sizeBytes);
  t.true(comparison.identical, `legs differ at byte ${comparison.firstDifference} (seeds ${seeds.join(', ')})`);
  // Kept when the legs differ, so they can be examined.
  if (comparison.identical) fs.rmSync(dir, { recursive: true, force: true });
  else t.log(`legs kept in ${dir}`);
});
