import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { adminRequest } from '../../tools/admin-client.js';
import { cli, hammerScript } from '../helpers/cli.js';
import { startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, run } from '../helpers/tools.js';
import { statusWhen } from '../helpers/wait.js';

interface Status {
  health: string;
  legs: Array<{ state: string }>;
  regions: { bitsSet: number; outOfSync: number };
  resync: { running: boolean };
}

/** Overlapping writes, trims, zeroes and flushes on the first 8 MiB for `seconds`; prints how many completed. */
function hammer(uri: string, seed: number, seconds: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return run('/usr/bin/python3', [hammerScript, uri, String(seed), String(seconds), String(8 << 20)], { timeoutMs: 60_000 });
}

/** Reads 16..24 MiB (past the hammered area) in 1 MiB requests, checking the pattern: the reads spread over the legs. */
async function readPattern(uri: string): Promise<string> {
  const commands = Array.from({ length: 8 }, (_, index) => ['-c', `read -P 0x5a ${16 + index}M 1M`]).flat();
  const result = await run('qemu-io', ['-f', 'raw', ...commands, uri]);
  return result.code === 0 && !/verification failed|failed/.test(result.stdout + result.stderr) ? 'ok' : result.stdout + result.stderr;
}

test('three legs: the source leg and then a second leg fail mid-workload, the last one serves, both come back, and kill -9 recovery agrees', async (t) => {
  const dir = makeTempDir('three-legs-');
  const config = path.join(dir, 'config.yaml');
  const faulty = '      faults: { rules: [ { ops: [write, flush, read], error: EIO, armed: false } ] }';
  fs.writeFileSync(config, `
listen: { tcp: "127.0.0.1:0", unix: null, admin: admin.sock }
storage:
  sizeBytes: 32MiB
  log: mirror.log
  regionSize: 256KiB
  sweepIntervalMs: 200
  legs:
    - path: leg0.img
${faulty}
    - path: leg1.img
    - path: leg2.img
${faulty}
`);
  const admin = path.join(dir, 'admin.sock');
  const uri = (server: { uri(): string }): string => server.uri();
  const server = await startServerProcess(['--config', config]);
  try {
    t.is((await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 16M 8M', uri(server)])).code, 0);
    // Leg 0 is the source leg. Its reads fail first: each failed read is retried on another leg.
    await adminRequest(admin, { command: 'fault', slot: 0, action: 'trigger' });
    t.is(await readPattern(uri(server)), 'ok');
    const first = await statusWhen<Status>(admin, (status) => status.legs[0].state === 'faulty', 5000, 50);
    t.is(first.legs[0].state, 'faulty', 'a read error failed the leg');

    const workload = hammer(uri(server), 11, 2);
    await new Promise((resolve) => setTimeout(resolve, 400));
    await adminRequest(admin, { command: 'fault', slot: 2, action: 'trigger' });
    const result = await workload;
    t.is(result.code, 0, result.stderr);
    t.true(Number(result.stdout) > 100, `the workload kept going: ${result.stdout} ${result.stderr}`);

    const degraded = await statusWhen<Status>(admin, (status) => status.legs[2].state === 'faulty', 5000, 50);
    t.deepEqual(degraded.legs.map((leg) => leg.state), ['faulty', 'in_sync', 'faulty']);
    t.is(degraded.health, 'degraded');
    const alone = await hammer(uri(server), 12, 1);
    t.true(Number(alone.stdout) > 100, `one leg left still serves writes: ${alone.stdout} ${alone.stderr}`);
    t.is(await readPattern(uri(server)), 'ok', 'and reads');

    for (const slot of [0, 2]) {
      await adminRequest(admin, { command: 'fault', slot, action: 'heal' });
      const readd = await cli(['re-add', String(slot), '--admin', admin]);
      t.is(readd.code, 0, readd.stderr);
    }
    const back = await statusWhen<Status>(admin, (status) => status.legs.every((leg) => leg.state === 'in_sync'), 15_000, 50);
    t.deepEqual(back.legs.map((leg) => leg.state), ['in_sync', 'in_sync', 'in_sync']);
    const online = await cli(['check', '--admin', admin]);
    t.regex(online.stdout, /compared legs 0, 1, 2: .*mismatch_cnt 0/);

    const crashing = hammer(uri(server), 13, 2);
    await new Promise((resolve) => setTimeout(resolve, 300));
    await server.kill();
    await crashing;
  } finally {
    await server.kill();
  }
  const again = await startServerProcess(['--config', config]);
  try {
    const recovered = await statusWhen<Status>(admin, (status) => !status.resync.running && status.regions.outOfSync === 0, 15_000, 50);
    t.is(recovered.regions.outOfSync, 0);
  } finally {
    t.is(await again.stop(), 0);
  }
  const offline = await cli(['check', '--config', config]);
  t.regex(offline.stdout, /compared legs 0, 1, 2: .*mismatch_cnt 0/);
  fs.rmSync(dir, { recursive: true, force: true });
});
