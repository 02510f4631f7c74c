import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { legContents } from '../helpers/mirror-fixture.js';
import { cliPath, projectRoot, startServerProcess } from '../helpers/server-process.js';
import { makeTempDir, run, runOk } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const sizeBytes = 256 * MiB;

function thinMirrorConfig(dir: string, writeAroundSize: string): string {
  const file = path.join(dir, 'config.yaml');
  fs.writeFileSync(file, `
listen: { tcp: "127.0.0.1:0", unix: null, admin: admin.sock }
storage:
  sizeBytes: 256MiB
  log: mirror.log
  regionSize: 1MiB
  sweepIntervalMs: 1000
  legs:
    - path: leg0.thin
      thin: { poolSize: 32MiB, lowWater: 8MiB }
    - path: leg1.thin
      thin: { poolSize: 32MiB, lowWater: 8MiB }
cache: { size: 32MiB, dirtyLimit: 16MiB, writebackIntervalMs: 100, dirtyExpireMs: 200, writeAroundSize: ${writeAroundSize} }
log: { level: info }
`);
  return file;
}

async function cli(args: string[]): Promise<string> {
  return (await runOk(process.execPath, [cliPath, ...args])).stdout;
}

// The client writes 1 MiB blocks: cached (writeAroundSize 0), the cache absorbs writes past the full pool and
// its writeback meets ENOSPC; around the cache (the default), the write that finds the pool full is refused itself.
for (const [variant, writeAroundSize] of [['cached', '0'], ['written around the cache', '64KiB']] as const) {
test(`nbdsh fills a thin mirror until ENOSPC (${variant}): nothing acknowledged is lost, the pool grows online, the retried flush succeeds, legs identical`, async (t) => {
  const cached = writeAroundSize === '0';
  const dir = makeTempDir('thin-server-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const config = thinMirrorConfig(dir, writeAroundSize);
  const admin = path.join(dir, 'admin.sock');
  const server = await startServerProcess(['--config', config]);
  const script = path.join(projectRoot, 'test', 'python', 'fill_pool.py');
  let acked = 0;
  try {
    const fill = await run('/usr/bin/python3', [script, server.uri(), 'fill', '8'], { timeoutMs: 120_000 });
    t.is(fill.code, 0, fill.stderr);
    const result = JSON.parse(fill.stdout) as { acked: number; writeErrno: string | null; flushErrno: string | null };
    t.log(`acknowledged ${result.acked} MiB before ENOSPC on a 32 MiB pool with a 16 MiB dirty limit`);
    acked = result.acked;
    t.is(result.writeErrno, 'ENOSPC', 'the client sees ENOSPC, not EIO');
    if (cached) {
      t.is(result.flushErrno, 'ENOSPC', 'the flush reports the failed writeback as ENOSPC');
      t.true(acked >= 32 && acked < 64, `${acked} MiB acknowledged`);
    } else {
      t.is(result.flushErrno, null, 'nothing acknowledged is unwritten: the flush succeeds');
      t.true(acked >= 24 && acked <= 32, `${acked} MiB acknowledged, none past the pool`);
    }
    const status = JSON.parse(await cli(['status', '--admin', admin, '--json'])) as {
      health: string; legs: Array<{ state: string; pool: { belowLowWater: boolean; freeBytes: number } }>; cache: { noSpace?: string; dirtyBytes: number };
    };
    t.not(status.health, 'failed', 'out of space is not a failure');
    t.true(status.legs.every((leg) => leg.state === 'in_sync' && leg.pool.belowLowWater && leg.pool.freeBytes === 0));
    if (cached) {
      t.regex(status.cache.noSpace ?? '', /full/);
      t.true(status.cache.dirtyBytes > 0);
    } else {
      t.is(status.cache.dirtyBytes, 0, 'the refused writes left nothing in the cache');
    }
    t.true(server.logs.some((entry) => entry.msg === 'thin pool below its low-water mark: grow it (nbd-mirror pool grow) before it fills'));
    const check = await cli(['check', '--admin', admin]);
    t.regex(check, /mismatch_cnt 0/, 'both legs agree on everything written to them');

    for (const slot of ['0', '1']) t.regex(await cli(['pool', 'grow', slot, '--by', '96MiB', '--admin', admin]), /128 MiB/);
    const verify = await run('/usr/bin/python3', [script, server.uri(), 'verify', String(acked)], { timeoutMs: 120_000 });
    t.is(verify.code, 0, verify.stderr);
    // Right after the grow the regions a refused write left out of sync may still be resyncing: status then exits 1.
    const grownStatus = await run(process.execPath, [cliPath, 'status', '--admin', admin, '--json']);
    t.true(grownStatus.code === 0 || grownStatus.code === 1, grownStatus.stderr);
    const grown = JSON.parse(grownStatus.stdout) as { cache: { noSpace?: string; dirtyBytes: number } };
    t.is(grown.cache.noSpace, undefined);
    t.regex(await cli(['check', '--admin', admin]), /mismatch_cnt 0/);
  } finally {
    t.is(await server.stop(), 0);
  }
  const legs = [{ path: path.join(dir, 'leg0.thin'), thin: { poolBytes: 0, chunkSizeBytes: 0, lowWaterBytes: 0 } },
    { path: path.join(dir, 'leg1.thin'), thin: { poolBytes: 0, chunkSizeBytes: 0, lowWaterBytes: 0 } }];
  const [first, second] = await Promise.all(legs.map((leg) => legContents(leg, sizeBytes)));
  t.true(first.equals(second), 'the legs are identical after a clean stop');
  t.false(first.subarray(0, (acked + 8) * MiB).every((byte) => byte === 0));
  const offline = await cli(['status', '--config', config]);
  t.true(offline.includes(`thin pool ${acked + 8} MiB used of 128 MiB`), offline);
});
}
