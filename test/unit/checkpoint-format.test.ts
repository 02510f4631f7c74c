import test from 'ava';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { CheckpointError, CheckpointStore } from '../../cbt/checkpoint-store.js';
import { bitmapBytesFor, type CheckpointFileState, decodeCheckpointFile, encodeCheckpointFile } from '../../cbt/format.js';
import { ChangeTrackingDevice } from '../../cbt/tracking-device.js';
import type { MirrorEvent } from '../../blockdev/events.js';
import { type BlockDevice, finishedNow } from '../../blockdev/types.js';
import { makeTempDir } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const granule = 64 * 1024;

function fileState(): CheckpointFileState {
  const bitmap = new Uint8Array(bitmapBytesFor(8 * MiB, granule));
  bitmap[0] = 0b101;
  return { mirrorUuid: randomBytes(16), fileUuid: randomBytes(16), sequence: 3n, granularityBytes: granule, deviceSizeBytes: 8 * MiB,
    checkpoints: [{ name: 'full-1', uuid: randomBytes(16), createdAtMs: 1_700_000_000_000, bitmap }] };
}

test('the checkpoint file decodes to what was encoded; every kind of damage is refused with its reason', (t) => {
  const encoded = encodeCheckpointFile(fileState());
  const back = decodeCheckpointFile(encoded);
  t.is(back.checkpoints[0].name, 'full-1');
  t.is(back.checkpoints[0].bitmap[0], 0b101);
  const damaged = (at: number, value: number): Buffer => {
    const copy = Buffer.from(encoded);
    copy[at] = value;
    return copy;
  };
  t.throws(() => decodeCheckpointFile(damaged(0, 0x41)), { message: /bad magic/ });
  t.throws(() => decodeCheckpointFile(damaged(8, 9)), { message: /unsupported version 9/ });
  t.throws(() => decodeCheckpointFile(damaged(4096, 0xff)), { message: /checksum mismatch/ }, 'a bitmap byte');
  t.throws(() => decodeCheckpointFile(damaged(130, 0x20)), { message: /checksum mismatch/ }, 'a name byte');
  t.throws(() => decodeCheckpointFile(encoded.subarray(0, encoded.length - 1)), { message: /checksum mismatch|bytes, but/ }, 'truncated');
  t.throws(() => decodeCheckpointFile(encoded.subarray(0, 100)), { message: /shorter than the header/ });
});

test('a store refuses another mirror\'s file and widens by the regions whose log bits are set', async (t) => {
  const dir = makeTempDir('checkpoint-store');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'mirror.log.checkpoints');
  const mirrorUuid = randomBytes(16);
  const events: MirrorEvent[] = [];
  const options = { mirrorUuid, deviceSizeBytes: 8 * MiB, granularityBytes: granule, regionSizeBytes: MiB, regionsWithBitsSet: [],
    events: (event: MirrorEvent) => events.push(event) };
  const store = CheckpointStore.open(file, options);
  t.false(store.active);
  await store.create('c');
  t.deepEqual(events, [{ event: 'checkpoint-created', name: 'c' }], 'reported once durable');
  store.mark(3 * MiB + 5, 10);
  await store.persist();
  const reopened = CheckpointStore.open(file, { ...options, regionsWithBitsSet: [6] });
  t.deepEqual(reopened.runs('c', 0, 8 * MiB, false)?.filter((run) => run.dirty).map((run) => run.lengthBytes), [granule, MiB],
    'the persisted granule, and all of region 6');
  t.throws(() => CheckpointStore.open(file, { ...options, mirrorUuid: randomBytes(16) }), { instanceOf: CheckpointError, message: /another mirror/ });
  t.throws(() => CheckpointStore.open(file, { ...options, deviceSizeBytes: 16 * MiB }), { message: /tracks a 8388608-byte device/ });
  await t.throwsAsync(reopened.create('c'), { message: /exists already/ });
  for (let index = 1; index < 16; index += 1) await reopened.create(`n${index}`);
  await t.throwsAsync(reopened.create('one-too-many'), { message: /16 checkpoints exist, the most there can be/ });
  await reopened.remove('n3');
  t.deepEqual(events.at(-1), { event: 'checkpoint-removed', name: 'n3' });
  t.deepEqual(CheckpointStore.open(file, options).names().length, 15, 'the removal is durable');
});

test('a checkpoint created while a write is in flight counts that write as changed', async (t) => {
  const dir = makeTempDir('checkpoint-inflight');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = CheckpointStore.open(path.join(dir, 'c'), { mirrorUuid: randomBytes(16), deviceSizeBytes: 8 * MiB, granularityBytes: granule,
    regionSizeBytes: MiB, regionsWithBitsSet: [] });
  let finishWrite = (): void => undefined;
  const below = {
    sizeBytes: 8 * MiB, blockSizeBytes: 512, capabilities: {} as BlockDevice['capabilities'],
    write: () => new Promise<void>((resolve) => { finishWrite = resolve; }),
    trim: () => finishedNow,
  } as unknown as BlockDevice;
  const device = new ChangeTrackingDevice(below, store);
  const writing = device.write(2 * MiB, Buffer.alloc(4096), { fua: false });
  await store.create('during');
  t.deepEqual(store.runs('during', 2 * MiB, granule, false), [{ lengthBytes: granule, dirty: false }], 'not yet: the write has not landed');
  finishWrite();
  await writing;
  t.deepEqual(store.runs('during', 2 * MiB, granule, false), [{ lengthBytes: granule, dirty: true }]);
  await device.trim(5 * MiB, 3 * granule, { fua: false });
  t.deepEqual(store.runs('during', 5 * MiB, 4 * granule, false), [{ lengthBytes: 3 * granule, dirty: true }, { lengthBytes: granule, dirty: false }]);
  t.deepEqual(store.runs('during', 5 * MiB, 4 * granule, true), [{ lengthBytes: 3 * granule, dirty: true }], 'REQ_ONE: the first run only');
});

test('a create or remove whose file cannot be written changes nothing: no checkpoint appears, none is lost or misses a mark', async (t) => {
  const dir = makeTempDir('checkpoint-failing');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const folder = path.join(dir, 'log-folder');
  fs.mkdirSync(folder);
  const store = CheckpointStore.open(path.join(folder, 'c'), { mirrorUuid: randomBytes(16), deviceSizeBytes: 8 * MiB, granularityBytes: granule,
    regionSizeBytes: MiB, regionsWithBitsSet: [] });
  await store.create('kept');
  fs.rmSync(folder, { recursive: true });
  await t.throwsAsync(store.create('not-durable'), { message: /checkpoint file .*ENOENT/ });
  t.deepEqual(store.names(), ['kept'], 'a checkpoint that is not durable does not exist');
  const removing = store.remove('kept');
  store.mark(MiB, 10);
  await t.throwsAsync(removing, { message: /ENOENT/ });
  t.deepEqual(store.names(), ['kept'], 'the removal did not happen');
  t.deepEqual(store.runs('kept', MiB, granule, false), [{ lengthBytes: granule, dirty: true }], 'and it was marked meanwhile');
});

test('the configured granule applies while no checkpoint exists; existing checkpoints keep theirs', async (t) => {
  const dir = makeTempDir('checkpoint-granule');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'c');
  const options = { mirrorUuid: randomBytes(16), deviceSizeBytes: 8 * MiB, granularityBytes: granule, regionSizeBytes: MiB, regionsWithBitsSet: [] };
  const store = CheckpointStore.open(file, options);
  await store.create('a');
  t.is(CheckpointStore.open(file, { ...options, granularityBytes: 4 * granule }).granularityBytes, granule, 'kept while a exists');
  await store.remove('a');
  const empty = CheckpointStore.open(file, { ...options, granularityBytes: 4 * granule });
  t.is(empty.granularityBytes, 4 * granule, 'applies once none exists');
  await empty.create('b');
  empty.mark(MiB, 1);
  t.deepEqual(empty.runs('b', MiB, 4 * granule, false), [{ lengthBytes: 4 * granule, dirty: true }], 'one 256 KiB granule');
});
