import fs from 'node:fs';
import { getSystemErrorName } from 'node:util';
import { native } from './native.js';

/** Callback fs calls as promises: cheaper than FileHandle on the hot path. */
export function preadAll(fd: number, target: Buffer, targetOffset: number, positionBytes: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      fs.read(fd, target, targetOffset + done, target.length - targetOffset - done, positionBytes + done,
        (error, bytesRead) => {
          if (error) return reject(error);
          done += bytesRead;
          // bytesRead 0 means end of file: the caller zero-fills the rest.
          if (bytesRead === 0 || targetOffset + done === target.length) return resolve(done);
          step();
        });
    };
    step();
  });
}

/** Fills target[targetOffset..] from the file at positionBytes; past the end of the file, with zeroes (as a device reads). */
export async function preadOrZeroes(fd: number, target: Buffer, targetOffset: number, positionBytes: number): Promise<void> {
  const readBytes = await preadAll(fd, target, targetOffset, positionBytes);
  if (targetOffset + readBytes < target.length) target.fill(0, targetOffset + readBytes);
}

export function pwriteAll(fd: number, data: Buffer, positionBytes: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      fs.write(fd, data, done, data.length - done, positionBytes + done, (error, written) => {
        if (error) return reject(error);
        done += written;
        if (done === data.length) return resolve();
        step();
      });
    };
    step();
  });
}

export function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (error) => (error ? reject(error) : resolve())));
}

export function closeFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.close(fd, (error) => (error ? reject(error) : resolve())));
}

export function pwriteAllSync(fd: number, data: Buffer, positionBytes: number): void {
  // The addon's call skips fs.writeSync's argument checks: about 0.2 us of a 1.2 us 4k write.
  const pwrite = native?.pwriteSync;
  for (let done = 0; done < data.length;) {
    if (pwrite === undefined) {
      done += fs.writeSync(fd, data, done, data.length - done, positionBytes + done);
      continue;
    }
    const written = pwrite(fd, done === 0 ? data : data.subarray(done), positionBytes + done);
    if (written <= 0) throw systemError(written === 0 ? -5 : written, `pwrite at ${positionBytes + done}`);
    done += written;
  }
}

/** An error shaped like the ones node:fs throws, so toBlockError maps its code. */
function systemError(negativeErrno: number, syscall: string): NodeJS.ErrnoException {
  const code = getSystemErrorName(negativeErrno);
  return Object.assign(new Error(`${code}: ${syscall}`), { code, errno: negativeErrno, syscall });
}
