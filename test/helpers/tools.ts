import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export { run, runOk, type RunResult } from '../../tools/crash-test/process-tools.js';

export function makeTempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `nbd-mirror-${prefix}-`));
}

/** A free TCP port on 127.0.0.1 (for peers such as nbdkit that need one named). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export function sha256File(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** A file of seeded pseudo-random bytes (fast, reproducible). */
export function writeRandomFile(file: string, sizeBytes: number, seed = 1): void {
  const fd = fs.openSync(file, 'w');
  try {
    const chunkBytes = 1 << 20;
    let counter = 0;
    for (let done = 0; done < sizeBytes; done += chunkBytes) {
      const length = Math.min(chunkBytes, sizeBytes - done);
      const chunk = Buffer.allocUnsafe(length);
      // AES-CTR keystream: fast, deterministic pseudo-random data.
      const key = crypto.createHash('sha256').update(`seed:${seed}`).digest();
      const iv = Buffer.alloc(16);
      iv.writeUInt32BE(counter++, 8);
      const cipher = crypto.createCipheriv('aes-256-ctr', key, iv);
      const zeros = Buffer.alloc(length);
      cipher.update(zeros).copy(chunk);
      fs.writeSync(fd, chunk, 0, length, done);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** `length` bytes of `file` from `offset` (zeroes past its end). */
export function readFileRange(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const buffer = Buffer.alloc(length);
    fs.readSync(fd, buffer, 0, length, offset);
    return buffer;
  } finally {
    fs.closeSync(fd);
  }
}

/** How many descriptors a process has open (a leak shows as growth). */
export function openDescriptorCount(pid: number | 'self' = 'self'): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}
