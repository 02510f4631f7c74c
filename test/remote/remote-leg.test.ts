import test from 'ava';
import crypto from 'node:crypto';
import { RemoteLeg } from '../../backends/nbd-client/remote-leg.js';
import { parseNbdUri } from '../../backends/nbd-client/nbd-uri.js';
import { remoteServerKinds, serveRemote } from '../helpers/remote-exports.js';
import { readFileRange } from '../helpers/tools.js';

const sizeBytes = 64 * 1024 * 1024;


for (const kind of remoteServerKinds) {
  for (const unix of [false, true]) {
    test(`a remote leg served by ${kind} over ${unix ? 'a unix socket' : 'TCP'} reads, writes, zeroes, trims and flushes what the file holds`, async (t) => {
      const remote = await serveRemote(t, kind, { sizeBytes, unix });
      const leg = await RemoteLeg.connect({ address: parseNbdUri(remote.uri), name: 'leg1' });
      t.teardown(() => leg.close());
      t.is(leg.exportSizeBytes, sizeBytes);

      const data = crypto.randomBytes(3 * 1024 * 1024 + 4096);
      await leg.write(1024 * 1024, data, { fua: false });
      await leg.write(40 * 1024 * 1024, data.subarray(0, 65536), { fua: true });
      await leg.flush();
      t.true(readFileRange(remote.file, 1024 * 1024, data.length).equals(data), 'the written bytes are in the exported file');

      // Pipelined: many requests at once, answered out of order by some servers.
      const reads = await Promise.all(Array.from({ length: 48 }, async (_, index) => {
        const target = Buffer.alloc(65536);
        await leg.read(1024 * 1024 + index * 65536, target);
        return target;
      }));
      t.true(Buffer.concat(reads).equals(data.subarray(0, 48 * 65536)));

      await leg.writeZeroes(1024 * 1024 + 4096, 8192, { fua: false, noHole: true, fast: false });
      await leg.trim(2 * 1024 * 1024, 1024 * 1024, { fua: true });
      const back = Buffer.alloc(data.length);
      await leg.read(1024 * 1024, back);
      const expected = Buffer.from(data);
      expected.fill(0, 4096, 4096 + 8192);
      expected.fill(0, 1024 * 1024, 2 * 1024 * 1024);
      t.true(back.equals(expected), 'zeroed and trimmed ranges read back as zeroes');
      await leg.flush();
      t.true(readFileRange(remote.file, 1024 * 1024, data.length).equals(expected), 'and the file agrees');

      const extents = await leg.blockStatus(0, sizeBytes);
      t.true(extents.length >= 1);
      t.is(extents[0].offsetBytes, 0);
      let at = 0;
      for (const extent of extents) {
        t.is(extent.offsetBytes, at);
        at += extent.lengthBytes;
      }
      t.true(at <= sizeBytes);
    });
  }
}

test('a remote that stops answering fails every request in flight with EIO within the failfast time', async (t) => {
  const remote = await serveRemote(t, 'nbdkit', { sizeBytes });
  const leg = await RemoteLeg.connect({ address: parseNbdUri(remote.uri), name: 'leg1', requestTimeoutMs: 400 });
  t.teardown(() => leg.close());
  const lost: string[] = [];
  leg.onLost((reason) => lost.push(reason));
  await leg.write(0, Buffer.alloc(4096, 1), { fua: true });
  const resume = await remote.freeze();
  const started = Date.now();
  const error = await t.throwsAsync(leg.read(0, Buffer.alloc(4096)));
  const waited = Date.now() - started;
  t.regex(error!.message, /EIO: leg1: .*no reply to a read within 400 ms/);
  t.true(waited >= 350 && waited < 2000, `failed after ${waited} ms`);
  t.is(lost.length, 1);
  await t.throwsAsync(leg.write(0, Buffer.alloc(4096), { fua: false }), { message: /not connected/ });
  resume();
});
