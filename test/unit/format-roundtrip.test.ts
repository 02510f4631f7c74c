import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import test from 'ava';
import { encodeSuperblock } from '../../backends/thin-format.js';
import { encodeLabel } from '../../mirror/leg-label.js';
import { decodeCopy, encodeCopy, type LogState } from '../../regionlog/format.js';

// Every on-disk record is decoded back inside its encoder, so a record that
// would not read back as written never reaches the disk.

function logState(): LogState {
  return {
    mirrorUuid: randomBytes(16), regionSizeBytes: 1 << 20, deviceSizeBytes: 64 << 20, regionCount: 64, sequence: 7n,
    cleanShutdown: false, labelUpdatePending: true, eventsCurrent: 5n, eventsPrevious: 4n,
    legs: [0, 1].map((slot) => ({ uuid: randomBytes(16), state: slot === 0 ? 'in_sync' : 'rebuilding', rebuildMode: slot === 0 ? 'none' : 'bitmap',
      events: 5n, rebuildCheckpointBytes: 0, failedAtMs: 0, heldByOperator: false })),
    dirty: Uint8Array.from([0b1010_0001, 0, 0, 0, 0, 0, 0, 0b1000_0000]),
  } as LogState;
}

test('a region log copy decodes to what was encoded', (t) => {
  const state = logState();
  const back = decodeCopy(encodeCopy(state));
  t.is(back.sequence, 7n);
  t.deepEqual([...back.dirty], [...state.dirty]);
});

test('records that would not read back as written are refused at encode time', (t) => {
  t.throws(() => encodeCopy({ ...logState(), regionCount: 65 }), { message: /does not fit device size/ },
    'a region count that disagrees with the device size');
  t.throws(() => encodeCopy({ ...logState(), mirrorUuid: randomBytes(8) }), { name: 'AssertionError' }, 'a short mirror UUID');
  const label = { mirrorUuid: randomBytes(16), legUuid: randomBytes(16), slot: 1, dataSizeBytes: 1 << 30, events: 3n, sequence: 1n };
  t.notThrows(() => encodeLabel(label));
  t.throws(() => encodeLabel({ ...label, legUuid: randomBytes(4) }), { name: 'AssertionError' }, 'a short leg UUID');
  const superblock = { sequence: 1n, poolUuid: randomBytes(16), virtualSizeBytes: 1 << 30, chunkSizeBytes: 65536, capacityChunks: 16 };
  t.notThrows(() => encodeSuperblock(superblock));
  t.throws(() => encodeSuperblock({ ...superblock, chunkSizeBytes: 65535 }), { name: 'AssertionError' }, 'a chunk size no reader accepts');
  t.throws(() => encodeSuperblock({ ...superblock, capacityChunks: 1 << 20 }), { name: 'AssertionError' }, 'a capacity beyond the virtual size');
});

test('the operator\'s hold on a faulty leg reads back; unknown leg flags, or a hold on a leg not faulty, are refused', (t) => {
  const state = logState();
  state.legs[1] = { ...state.legs[1], state: 'faulty', rebuildMode: 'none', failedAtMs: 1234, heldByOperator: true };
  const copy = encodeCopy(state);
  t.true(decodeCopy(copy).legs[1].heldByOperator);
  t.false(decodeCopy(copy).legs[0].heldByOperator);
  // Flags live at byte 18 of the leg record (128 + 64 * slot); the checksum is recomputed so only the field is wrong.
  const withFlags = (slot: number, flags: number): Buffer => {
    const changed = Buffer.from(copy);
    changed.writeUInt8(flags, 128 + 64 * slot + 18);
    changed.writeUInt32LE(0, 16);
    changed.writeUInt32LE(crc32(changed), 16);
    return changed;
  };
  t.throws(() => decodeCopy(withFlags(1, 0x81)), { message: /leg slot 1: unknown flags 0x81/ });
  t.throws(() => decodeCopy(withFlags(0, 1)), { message: /leg slot 0: held by the operator but in_sync/ });
  const torn = Buffer.from(copy);
  torn.writeUInt8(0, 128 + 64 + 18);
  t.throws(() => decodeCopy(torn), { message: /checksum mismatch/ }, 'a flag changed without its checksum');
});
