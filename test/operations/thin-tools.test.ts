import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { startConfiguredMirror, tool } from '../helpers/operator.js';
import { makeTempDir } from '../helpers/tools.js';

test('offline pool grow reports the configured low-water mark and says the configured poolSize only sizes a new pool; dump-log reads the configured log', async (t) => {
  const dir = makeTempDir('ops-thin');
  fs.writeFileSync(path.join(dir, 'config.yaml'), `listen:
  admin: admin.sock
storage:
  sizeBytes: 64MiB
  log: mirror.log
  legs:
    - path: leg0.img
    - path: leg1.thin
      thin: { poolSize: 32MiB, lowWater: 8MiB }
`);
  const server = await startConfiguredMirror(dir, ['--no-unix']);
  t.is(await server.stop(), 0);
  const grown = await tool(dir, ['pool', 'grow', '1', '--by', '16MiB']);
  t.is(grown.code, 0, grown.stderr);
  t.regex(grown.stdout, /leg 1: thin pool 0 MiB used of 48 MiB \(48 MiB free, low water 8 MiB\)/);
  t.regex(grown.stdout, /poolSize, 33554432 bytes, sizes a pool only when it is created; the pool itself now holds 50331648/);
  t.regex((await tool(dir, ['status'])).stdout, /low water 8 MiB/, 'status and pool grow agree');
  const dump = await tool(dir, ['dump-log']);
  t.is(dump.code, 0, dump.stderr);
  t.regex(dump.stdout, /^region log .*mirror\.log/);
  fs.rmSync(dir, { recursive: true, force: true });
});
