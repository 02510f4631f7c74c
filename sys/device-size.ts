import fs from 'node:fs';
import { BlockError, fromNegativeErrno } from '../blockdev/errors.js';
import { native, SEEK_END } from './native.js';

/** Size of an open regular file or block device. */
export function fileOrDeviceSize(fd: number, path: string): number {
  const stat = fs.fstatSync(fd);
  return stat.isBlockDevice() ? blockDeviceSize(fd, path) : stat.size;
}

export function blockDeviceSize(fd: number, path: string): number {
  if (native === undefined) {
    throw new BlockError('ENOTSUP', `${path}: sizing a block device needs the native addon (npm run install)`);
  }
  const size = native.seek(fd, 0, SEEK_END);
  if (size < 0) throw fromNegativeErrno(size, `size of ${path}`);
  return size;
}
