import test from 'ava';
import crypto from 'node:crypto';
import { parseNbdUri } from '../../backends/nbd-client/nbd-uri.js';
import { RemoteLeg } from '../../backends/nbd-client/remote-leg.js';
import { BlockError } from '../../blockdev/errors.js';
import { Command, CommandFlag, OptionReply, ReplyFlag, ReplyType, TransmissionFlag } from '../../nbd/constants.js';
import { chunk, defaultAnswer, simpleReply, startScriptedServer } from '../helpers/scripted-nbd-server.js';

function connect(uri: string, extra: { usableSizeBytes?: number; requestTimeoutMs?: number } = {}): Promise<RemoteLeg> {
  return RemoteLeg.connect({ address: parseNbdUri(uri), name: 'leg1', connectTimeoutMs: 2000, ...extra });
}

const base = TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH;

test('servers that cannot hold a leg are refused at connect, each with its reason', async (t) => {
  const oldstyle = Buffer.alloc(16);
  oldstyle.writeBigUInt64BE(0x00420281861253n, 0);
  const plainNewstyle = Buffer.alloc(10);
  plainNewstyle.write('IHAVEOPT', 0, 'latin1');
  const cases: Array<[Parameters<typeof startScriptedServer>[1], RegExp]> = [
    [{ greeting: oldstyle }, /oldstyle protocol/],
    [{ greeting: plainNewstyle }, /does not speak fixed newstyle/],
    [{ transmissionFlags: base | TransmissionFlag.READ_ONLY }, /read-only; a leg must be writable/],
    [{ transmissionFlags: TransmissionFlag.HAS_FLAGS }, /does not offer flush/],
    [{ sizeBytes: 64 * 1024 }, /smaller than the 1048576 it must hold/],
    [{ goError: OptionReply.ERR_UNKNOWN }, /has no export named "disk"/],
    [{ goError: OptionReply.ERR_TLS_REQD }, /requires TLS .*use nbds:\/\//],
  ];
  for (const [script, expected] of cases) {
    const server = await startScriptedServer(t, script);
    await t.throwsAsync(connect(server.uri, { usableSizeBytes: 1024 * 1024 }), { message: expected, name: 'NegotiationError' });
  }
});

test('a server without GO is reached with EXPORT_NAME; without FUA a FUA write is a write and a flush; without write-zeroes zeroes are written', async (t) => {
  const server = await startScriptedServer(t, { noGo: true, structuredReplies: false, transmissionFlags: base });
  const leg = await connect(server.uri);
  t.teardown(() => leg.close());
  await leg.write(4096, Buffer.alloc(4096, 9), { fua: true });
  await leg.writeZeroes(0, 8192, { fua: false, noHole: false, fast: false });
  await leg.trim(8192, 4096, { fua: false });
  await t.throwsAsync(leg.writeZeroes(0, 4096, { fua: false, noHole: false, fast: true }), { instanceOf: BlockError, message: /ENOTSUP/ });
  const types = server.requests.map((request) => request.type);
  t.deepEqual(types, [Command.WRITE, Command.FLUSH, Command.WRITE, Command.WRITE], 'no command the server did not offer was sent');
  t.is(server.requests[0].flags & CommandFlag.FUA, 0);
  t.true(server.requests[2].payload!.every((byte) => byte === 0), 'write-zeroes became written zeroes');
  t.true(server.requests[3].payload!.every((byte) => byte === 0), 'trim became written zeroes, so every leg reads the same');
  t.is(leg.capabilities.blockStatus, false);
  t.deepEqual(await leg.blockStatus(0, 65536), [{ offsetBytes: 0, lengthBytes: 65536, hole: false, zero: false }]);
});

test('block-size constraints are honoured: the leg reports the minimum, and large requests are split at the maximum', async (t) => {
  const server = await startScriptedServer(t, { blockSizes: [4096, 4096, 65536] });
  const leg = await connect(server.uri);
  t.teardown(() => leg.close());
  t.is(leg.blockSizeBytes, 4096);
  const data = crypto.randomBytes(256 * 1024);
  await leg.write(0, data, { fua: false });
  const back = Buffer.alloc(data.length);
  await leg.read(0, back);
  t.true(back.equals(data));
  t.true(server.requests.every((request) => request.length <= 65536), 'no request longer than the maximum');
  t.is(server.requests.filter((request) => request.type === Command.WRITE).length, 4);
  const sent = server.requests.length;
  await t.throwsAsync(leg.write(512, Buffer.alloc(512), { fua: false }), { message: /not aligned to the remote's minimum block size of 4096/ });
  t.is(server.requests.length, sent, 'an unaligned request never reaches the server');
});

test('structured replies: a read in chunks out of order with a hole, an error chunk, and ENOSPC kept retryable', async (t) => {
  const server = await startScriptedServer(t, {
    answer(request, socket, memory) {
      if (request.type === Command.READ && request.offset === 0) {
        const second = Buffer.alloc(8 + 4096);
        second.writeBigUInt64BE(4096n, 0);
        second.fill(0x22, 8);
        chunk(socket, request.cookie, ReplyType.OFFSET_DATA, 0, second);
        const hole = Buffer.alloc(12);
        hole.writeBigUInt64BE(8192n, 0);
        hole.writeUInt32BE(4096, 8);
        chunk(socket, request.cookie, ReplyType.OFFSET_HOLE, 0, hole);
        const first = Buffer.alloc(8 + 4096);
        first.fill(0x11, 8);
        chunk(socket, request.cookie, ReplyType.OFFSET_DATA, ReplyFlag.DONE, first);
      } else if (request.type === Command.READ && request.offset === 65536) {
        const error = Buffer.alloc(6 + 9);
        error.writeUInt32BE(5, 0);
        error.writeUInt16BE(9, 4);
        error.write('disk gone', 6);
        chunk(socket, request.cookie, ReplyType.ERROR, ReplyFlag.DONE, error);
      } else if (request.type === Command.WRITE && request.offset === 131072) {
        simpleReply(socket, request.cookie, 28);
      } else defaultAnswer(request, socket, memory);
    },
  });
  const leg = await connect(server.uri);
  t.teardown(() => leg.close());
  const target = Buffer.alloc(12288, 0xff);
  await leg.read(0, target);
  t.true(target.subarray(0, 4096).every((byte) => byte === 0x11));
  t.true(target.subarray(4096, 8192).every((byte) => byte === 0x22));
  t.true(target.subarray(8192).every((byte) => byte === 0), 'the hole reads as zeroes');
  const failed = await t.throwsAsync(leg.read(65536, Buffer.alloc(4096)), { instanceOf: BlockError });
  t.is(failed!.code, 'EIO');
  t.regex(failed!.message, /read of 4096 bytes at 65536 failed on the remote \(EIO: disk gone\)/);
  const full = await t.throwsAsync(leg.write(131072, Buffer.alloc(4096), { fua: false }), { instanceOf: BlockError });
  t.is(full!.code, 'ENOSPC');
  t.true(full!.retryable, 'a full remote pool is retryable, as a local thin leg is');
  t.is(leg.lostReason, undefined, 'request errors do not end the connection');
});

test('a reply the server was never asked for ends the connection and fails the leg', async (t) => {
  const server = await startScriptedServer(t, {
    answer(request, socket) {
      simpleReply(socket, request.cookie + 1000n);
    },
  });
  const leg = await connect(server.uri);
  t.teardown(() => leg.close());
  const lost: string[] = [];
  leg.onLost((reason) => lost.push(reason));
  await t.throwsAsync(leg.write(0, Buffer.alloc(4096), { fua: false }), { message: /broke the protocol: a reply for cookie 1001/ });
  t.is(lost.length, 1);
  await t.throwsAsync(leg.flush(), { message: /not connected/ });
});

test('requests in flight are bounded: the remote never sees more than the cap at once', async (t) => {
  let inFlight = 0;
  let most = 0;
  const server = await startScriptedServer(t, {
    answer(request, socket, memory) {
      inFlight += 1;
      most = Math.max(most, inFlight);
      setTimeout(() => {
        inFlight -= 1;
        defaultAnswer(request, socket, memory);
      }, 5);
    },
  });
  const leg = await RemoteLeg.connect({ address: parseNbdUri(server.uri), name: 'leg1', requestsInFlightMax: 8 });
  t.teardown(() => leg.close());
  await Promise.all(Array.from({ length: 64 }, (_, index) => leg.write(index * 4096, Buffer.alloc(4096, index), { fua: false })));
  t.true(most <= 8, `at most 8 in flight (saw ${most})`);
  t.is(server.requests.length, 64);
});
