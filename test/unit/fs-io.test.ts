import fs from 'node:fs';
import test from 'ava';
import { pwriteAllSync } from '../../sys/fs-io.js';
import { native } from '../../sys/native.js';
import { toBlockError } from '../../blockdev/errors.js';

function thrownBy(action: () => void): NodeJS.ErrnoException {
  try {
    action();
  } catch (error) {
    return error as NodeJS.ErrnoException;
  }
  throw new Error('expected the write to fail');
}

test('pwriteAllSync fails as fs.writeSync does: the same errno code, so the same BlockError', (t) => {
  t.truthy(native?.pwriteSync, 'the addon is built, so the native path is the one under test');
  // /dev/full refuses every write with ENOSPC; a bad descriptor gives EBADF.
  const fd = fs.openSync('/dev/full', 'w');
  try {
    for (const [target, expected] of [[fd, 'ENOSPC'], [1_000_000, 'EBADF']] as const) {
      const ours = thrownBy(() => pwriteAllSync(target, Buffer.alloc(4096), 0));
      const nodes = thrownBy(() => fs.writeSync(target, Buffer.alloc(4096), 0, 4096, 0));
      t.is(ours.code, expected);
      t.is(nodes.code, expected);
      t.like(toBlockError(ours, 'write'), { code: toBlockError(nodes, 'write').code, retryable: expected === 'ENOSPC' });
    }
  } finally {
    fs.closeSync(fd);
  }
});
