import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { FileLock, type LockMode } from '../../sys/file-lock.js';
import { native } from '../../sys/native.js';
import { RegionLog } from '../../regionlog/region-log.js';
import { ThinLeg } from '../../backends/thin-leg.js';
import { type Holder, startHolder } from '../helpers/holder-process.js';
import { makeTempDir } from '../helpers/tools.js';

const lockModule = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../sys/file-lock.js');

/** Another process holding a lock on `file` until it is stopped: the case the lock exists for. */
function holdInChild(file: string, mode: LockMode): Promise<Holder> {
  return startHolder(`const { FileLock } = await import(${JSON.stringify(lockModule)});
    FileLock.acquire(process.argv[1], process.argv[2], 'leg');
    console.log('ready');`, [file, mode]);
}

function errorOf(action: () => unknown): Error & { code?: string } {
  try {
    action();
  } catch (error) {
    return error as Error & { code?: string };
  }
  throw new Error('expected the lock to be refused');
}

test('a file another process writes is refused with EBUSY; shared locks coexist; kill -9 leaves no stale lock', async (t) => {
  t.truthy(native?.lockFile, 'the addon is built, so locks are what is under test');
  const dir = makeTempDir('lock');
  const file = path.join(dir, 'leg.img');
  fs.writeFileSync(file, Buffer.alloc(4096));
  const writer = await holdInChild(file, 'exclusive');
  try {
    for (const mode of ['exclusive', 'shared'] as const) {
      const refused = errorOf(() => FileLock.acquire(file, mode, 'leg'));
      t.is(refused.code, 'EBUSY');
      t.regex(refused.message, /leg .*leg\.img is in use: another process holds it for writing \(a running nbd-mirror server/);
    }
    t.is(FileLock.holder(file), 'exclusive');
  } finally {
    await writer.stop();
  }
  t.is(FileLock.holder(file), 'none', 'the kernel dropped the lock with the process');

  const reader = await holdInChild(file, 'shared');
  try {
    const shared = FileLock.acquire(file, 'shared', 'leg');
    t.true(shared.locked, 'two readers share the file');
    shared.release();
    t.regex(errorOf(() => FileLock.acquire(file, 'exclusive', 'leg')).message, /another process is reading it \(an offline nbd-mirror check/);
  } finally {
    await reader.stop();
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

test('opens of one file in one process share its lock; it is dropped only when the last one releases', async (t) => {
  const dir = makeTempDir('lock-shared');
  const file = path.join(dir, 'leg.img');
  fs.writeFileSync(file, Buffer.alloc(4096));
  const first = FileLock.acquire(file, 'exclusive', 'leg');
  // Another path to the same inode is the same file.
  fs.linkSync(file, path.join(dir, 'alias.img'));
  const second = FileLock.acquire(path.join(dir, 'alias.img'), 'exclusive', 'leg');
  first.release();
  first.release();
  await t.throwsAsync(holdInChild(file, 'shared'), { message: /EBUSY: leg .* is in use/ }, 'still held by the second open');
  second.release();
  await (await holdInChild(file, 'exclusive')).stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('the region log and a thin pool lock themselves while open, and let go on close', async (t) => {
  const dir = makeTempDir('lock-devices');
  const logPath = path.join(dir, 'mirror.log');
  const log = await RegionLog.create(logPath, { deviceSizeBytes: 1 << 24, regionSizeBytes: 1 << 20, legUuids: [Buffer.alloc(16, 1), Buffer.alloc(16, 2)] });
  await log.close();
  const poolPath = path.join(dir, 'pool.img');
  ThinLeg.create(poolPath, { virtualSizeBytes: 1 << 24, poolBytes: 1 << 22, chunkSizeBytes: 65536 });

  const openLog = RegionLog.open(logPath);
  const pool = await ThinLeg.open({ path: poolPath });
  await t.throwsAsync(holdInChild(logPath, 'shared'), { message: /EBUSY: leg .*mirror\.log is in use/ });
  await t.throwsAsync(holdInChild(poolPath, 'shared'), { message: /EBUSY: leg .*pool\.img is in use/ });
  await openLog.close();
  await pool.close();
  for (const file of [logPath, poolPath]) await (await holdInChild(file, 'exclusive')).stop();

  // And the other way round: a running writer elsewhere keeps them from opening.
  const writer = await holdInChild(logPath, 'exclusive');
  try {
    t.regex(errorOf(() => RegionLog.open(logPath)).message, /EBUSY: region log .*mirror\.log is in use/);
    t.regex(errorOf(() => RegionLog.open(logPath, { readOnly: true })).message, /region log .* is in use/);
  } finally {
    await writer.stop();
  }
  const poolWriter = await holdInChild(poolPath, 'exclusive');
  try {
    await t.throwsAsync(ThinLeg.open({ path: poolPath, readOnly: true }), { message: /EBUSY: thin pool .*pool\.img is in use/ });
  } finally {
    await poolWriter.stop();
  }
  fs.rmSync(dir, { recursive: true, force: true });
});
