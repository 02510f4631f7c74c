import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a real peer tool with a hard time limit; never throws on a non-zero exit. */
export function run(command: string, args: string[], options: { timeoutMs?: number; input?: string; env?: NodeJS.ProcessEnv } = {}):
  Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { env: { ...process.env, ...options.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString(); });
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
    const timer = setTimeout(() => {
      stderr += `\n[killed after ${options.timeoutMs ?? 120_000} ms]`;
      child.kill('SIGKILL');
    }, options.timeoutMs ?? 120_000);
    child.on('error', (error) => { stderr += String(error); });
    // A tool that exits without reading its input closes the pipe first (EPIPE): not a failure.
    child.stdin.on('error', () => undefined);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(options.input ?? '');
  });
}

/** Like run, but fails with the tool's output when it exits non-zero. */
export async function runOk(command: string, args: string[], options: Parameters<typeof run>[2] = {}): Promise<RunResult> {
  const result = await run(command, args, options);
  if (result.code !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
  }
  return result;
}

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
