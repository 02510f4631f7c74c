import test from 'ava';
import type { BlockDevice } from '../../blockdev/types.js';
import { Option, OptionReply, TransmissionFlag } from '../../nbd/constants.js';
import { type ExportTable, handleOption, newNegotiation } from '../../nbd/negotiation.js';

const device = {
  sizeBytes: 1 << 30,
  blockSizeBytes: 512,
  capabilities: { readOnly: false, flush: true, fua: true, trim: true, writeZeroes: true, fastZero: true,
    blockStatus: true, multiConn: true, rotational: false },
} as BlockDevice;
const entry = { name: 'disk', description: 'd', device, readOnly: false };
const exports: ExportTable = { find: (name) => (name === '' || name === 'disk' ? entry : undefined), list: () => [entry] };

function goPayload(name: string, infos: number[] = []): Buffer {
  const nameBytes = Buffer.from(name);
  const payload = Buffer.alloc(6 + nameBytes.length + 2 * infos.length);
  payload.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(payload, 4);
  payload.writeUInt16BE(infos.length, 4 + nameBytes.length);
  infos.forEach((info, i) => payload.writeUInt16BE(info, 6 + nameBytes.length + 2 * i));
  return payload;
}

const replyType = (reply: Buffer): number => reply.readUInt32BE(12);

test('GO answers EXPORT and BLOCK_SIZE infos then ACK, and enters transmission with truthful flags', (t) => {
  const outcome = handleOption(newNegotiation(3), exports, Option.GO, goPayload('disk', [1, 2]), false);
  t.is(outcome.next, 'transmission');
  const types = outcome.replies.map(replyType);
  t.deepEqual(types, [OptionReply.INFO, OptionReply.INFO, OptionReply.INFO, OptionReply.INFO, OptionReply.ACK]);
  if (outcome.next !== 'transmission') return;
  const expected = TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH | TransmissionFlag.SEND_FUA |
    TransmissionFlag.SEND_TRIM | TransmissionFlag.SEND_WRITE_ZEROES | TransmissionFlag.SEND_FAST_ZERO |
    TransmissionFlag.CAN_MULTI_CONN | TransmissionFlag.SEND_CACHE;
  t.is(outcome.flags, expected);
});

test('read-only exports advertise READ_ONLY and no write commands', (t) => {
  const readOnly = { ...entry, readOnly: true };
  const table: ExportTable = { find: () => readOnly, list: () => [readOnly] };
  const outcome = handleOption(newNegotiation(3), table, Option.GO, goPayload(''), false);
  if (outcome.next !== 'transmission') return t.fail();
  t.truthy(outcome.flags & TransmissionFlag.READ_ONLY);
  t.falsy(outcome.flags & (TransmissionFlag.SEND_TRIM | TransmissionFlag.SEND_WRITE_ZEROES | TransmissionFlag.SEND_FUA));
});

test('malformed GO/INFO payloads get ERR_INVALID, unknown exports ERR_UNKNOWN, and negotiation continues', (t) => {
  const state = newNegotiation(3);
  const truncated = goPayload('disk').subarray(0, 7);
  t.is(replyType(handleOption(state, exports, Option.INFO, truncated, false).replies[0]), OptionReply.ERR_INVALID);
  const withNul = goPayload('di\0sk');
  t.is(replyType(handleOption(state, exports, Option.INFO, withNul, false).replies[0]), OptionReply.ERR_INVALID);
  const unknown = handleOption(state, exports, Option.GO, goPayload('other'), false);
  t.is(unknown.next, 'options');
  t.is(replyType(unknown.replies[0]), OptionReply.ERR_UNKNOWN);
  const trailing = Buffer.concat([goPayload('disk'), Buffer.alloc(1)]);
  t.is(replyType(handleOption(state, exports, Option.GO, trailing, false).replies[0]), OptionReply.ERR_INVALID);
});

test('meta contexts: only after structured replies; base:allocation is offered and selected', (t) => {
  const state = newNegotiation(3);
  const query = (names: string[]): Buffer => {
    const parts = [Buffer.alloc(4), Buffer.from('disk'), Buffer.alloc(4)];
    parts[0].writeUInt32BE(4);
    parts[2].writeUInt32BE(names.length);
    for (const name of names) {
      const length = Buffer.alloc(4);
      length.writeUInt32BE(Buffer.byteLength(name));
      parts.push(length, Buffer.from(name));
    }
    return Buffer.concat(parts);
  };
  t.is(replyType(handleOption(state, exports, Option.SET_META_CONTEXT, query(['base:allocation']), false).replies[0]),
    OptionReply.ERR_INVALID);
  handleOption(state, exports, Option.STRUCTURED_REPLY, Buffer.alloc(0), false);
  const listed = handleOption(state, exports, Option.LIST_META_CONTEXT, query([]), false);
  t.deepEqual(listed.replies.map(replyType), [OptionReply.META_CONTEXT, OptionReply.ACK]);
  const unknownNamespace = handleOption(state, exports, Option.SET_META_CONTEXT, query(['qemu:dirty-bitmap:x']), false);
  t.deepEqual(unknownNamespace.replies.map(replyType), [OptionReply.ACK], 'unknown contexts are ignored');
  t.is(state.metaContextExport, undefined);
  handleOption(state, exports, Option.SET_META_CONTEXT, query(['base:allocation']), false);
  t.is(state.metaContextExport, 'disk');
  const bad = query(['base:allocation']);
  bad.writeUInt32BE(1000, 12);
  t.is(replyType(handleOption(state, exports, Option.SET_META_CONTEXT, bad, false).replies[0]), OptionReply.ERR_INVALID);
});

test('during shutdown options get ERR_SHUTDOWN and ABORT is acknowledged', (t) => {
  const state = newNegotiation(3);
  t.is(replyType(handleOption(state, exports, Option.GO, goPayload('disk'), true).replies[0]), OptionReply.ERR_SHUTDOWN);
  const abort = handleOption(state, exports, Option.ABORT, Buffer.alloc(0), false);
  t.is(abort.next, 'close');
  t.is(replyType(abort.replies[0]), OptionReply.ACK);
});
