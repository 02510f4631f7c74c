import test from 'ava';
import type { FaultDevice } from '../../faults/fault-device.js';
import { classifyError, errorAction, errorPolicy, type ErrorSite, type ErrorVerdict } from '../../blockdev/error-policy.js';
import { BlockError, type BlockErrorCode } from '../../blockdev/errors.js';
import { PageCache } from '../../pagecache/page-cache.js';
import { legContents, mirrorFixture, silentLogger, stopMirror } from '../helpers/mirror-fixture.js';

const MiB = 1024 * 1024;

const verdicts: ErrorVerdict[] = ['shutdown', 'request', 'retry', 'fatal'];
const codes: BlockErrorCode[] = ['EPERM', 'EIO', 'ENOMEM', 'EINVAL', 'ENOSPC', 'EOVERFLOW', 'ENOTSUP', 'ESHUTDOWN', 'EROFS', 'EAGAIN', 'EBUSY'];

test('every error code has one verdict, and every site an action for every verdict', (t) => {
  const expected: Record<BlockErrorCode, ErrorVerdict> = {
    EPERM: 'request', EIO: 'fatal', ENOMEM: 'fatal', EINVAL: 'request', ENOSPC: 'retry', EOVERFLOW: 'request',
    ENOTSUP: 'request', ESHUTDOWN: 'shutdown', EROFS: 'request', EAGAIN: 'fatal', EBUSY: 'fatal',
  };
  for (const code of codes) t.is(classifyError(new BlockError(code, 'x')), expected[code], code);
  t.is(classifyError(new BlockError('EIO', 'x', { retryable: true })), 'retry', 'an error marked retryable is retried whatever its code');
  t.is(classifyError(new BlockError('ENOSPC', 'x', { retryable: false })), 'fatal', 'an ENOSPC that may have lost data is not retried');
  for (const site of Object.keys(errorPolicy) as ErrorSite[]) {
    t.deepEqual(Object.keys(errorPolicy[site]).sort(), [...verdicts].sort(), site);
    // Only a fatal error may fail a leg or the cache: a request or retryable error never takes a component down.
    for (const verdict of verdicts) {
      const action = errorPolicy[site][verdict];
      if (verdict !== 'fatal') t.false(action === 'fail-leg' || action === 'fail-cache', `${site}/${verdict}: ${action}`);
    }
    t.true(['fail-leg', 'fail-cache'].includes(errorPolicy[site].fatal), `${site}: a fatal error fails something`);
  }
  t.is(errorAction('leg-read', new BlockError('ENOSPC', 'x')), 'other-leg');
});

test('a retryable ENOSPC on a leg read does not fail the leg: the read is served by another leg', async (t) => {
  const fixture = mirrorFixture({ faults: [{ rules: [] }, { rules: [] }] });
  const mirror = await fixture.open();
  try {
    const data = Buffer.alloc(64 * 1024, 0x5e);
    await mirror.device.write(0, data, { fua: true });
    const faults = mirror.faults as FaultDevice[];
    faults[1].addRule({ ops: ['read'], error: 'ENOSPC', sticky: true });
    for (let index = 0; index < 8; index += 1) {
      const target = Buffer.alloc(data.length);
      await mirror.device.read(0, target);
      t.true(target.equals(data));
    }
    t.true(faults[1].injected.read > 0, 'leg 1 really answered ENOSPC');
    t.deepEqual(mirror.status().legs.map((leg) => leg.state), ['in_sync', 'in_sync'], 'no leg was failed');
  } finally {
    await stopMirror(mirror);
    fixture.cleanup();
  }
});

test('an EINVAL from below does not fail the cache: pages stay dirty and readable, the flush says EINVAL, a later flush succeeds', async (t) => {
  const fixture = mirrorFixture({ faults: [{ rules: [] }, { rules: [] }] });
  const mirror = await fixture.open();
  const cache = new PageCache(mirror.device, { capacityBytes: 8 * MiB, dirtyLimitBytes: 4 * MiB, dirtyExpireMs: 60_000, writebackIntervalMs: 0,
    noSpacePolicy: 'error', noSpaceTimeoutMs: 0, logger: silentLogger });
  try {
    const faults = mirror.faults as FaultDevice[];
    for (const fault of faults) fault.addRule({ ops: ['write'], error: 'EINVAL', sticky: true, armed: false });
    for (const fault of faults) fault.trigger();
    const data = Buffer.alloc(128 * 1024, 0x7a);
    await cache.write(MiB, data, { fua: false });
    const refused = await t.throwsAsync(cache.flush());
    t.regex(refused!.message, /EINVAL/);
    t.is(cache.failed, undefined, 'the cache is not failed');
    const target = Buffer.alloc(data.length);
    await cache.read(MiB, target);
    t.true(target.equals(data), 'the newest bytes are still read');
    t.true(cache.status().dirtyBytes >= data.length, 'kept dirty');
    for (const fault of faults) fault.heal();
    await cache.flush();
    for (const leg of fixture.settings.legs) {
      t.true((await legContents(leg, fixture.settings.sizeBytes)).subarray(MiB, MiB + data.length).equals(data));
    }
  } finally {
    await mirror.shutdown();
    await cache.close();
    fixture.cleanup();
  }
});
