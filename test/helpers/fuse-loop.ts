import { type ChildProcess, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { run, runOk } from './tools.js';

export interface LoopAttachment {
  /** The loop block device, e.g. /dev/loop3. */
  device: string;
  /** Unmounts anything we mounted, detaches the loop device and the FUSE mount. Safe to call twice. */
  detach(): Promise<void>;
  mount(mountPoint: string, options?: string[]): Promise<void>;
  unmount(mountPoint: string): Promise<void>;
}

/**
 * Exposes an NBD export to the host kernel without the nbd driver: nbdfuse
 * presents it as a file, and a loop device turns that file into a block
 * device a real filesystem can live on.
 */
export async function attachThroughFuse(uri: string, workDir: string): Promise<LoopAttachment> {
  const fuseDir = path.join(workDir, 'fuse');
  fs.mkdirSync(fuseDir, { recursive: true });
  const pidFile = path.join(workDir, 'nbdfuse.pid');
  const child: ChildProcess = spawn('nbdfuse', ['-P', pidFile, fuseDir, uri], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const image = path.join(fuseDir, 'nbd');
  for (let attempt = 0; attempt < 200 && !fs.existsSync(pidFile); attempt += 1) {
    if (child.exitCode !== null) throw new Error(`nbdfuse exited early: ${stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  if (!fs.existsSync(image)) {
    child.kill('SIGKILL');
    throw new Error(`nbdfuse did not expose ${image}: ${stderr}`);
  }
  const mounted = new Set<string>();
  let device: string;
  try {
    device = (await runOk('losetup', ['--find', '--show', image])).stdout.trim();
  } catch (error) {
    await run('fusermount3', ['-u', fuseDir]);
    await exited;
    throw error;
  }
  let detached = false;
  return {
    device,
    mount: async (mountPoint, options = []) => {
      fs.mkdirSync(mountPoint, { recursive: true });
      await runOk('mount', [...options, device, mountPoint]);
      mounted.add(mountPoint);
    },
    unmount: async (mountPoint) => {
      await runOk('umount', [mountPoint]);
      mounted.delete(mountPoint);
    },
    detach: async () => {
      if (detached) return;
      detached = true;
      for (const mountPoint of mounted) await run('umount', ['-l', mountPoint]);
      await run('losetup', ['-d', device]);
      // The loop driver lets go asynchronously; give it a moment before unmounting FUSE.
      for (let attempt = 0; attempt < 50; attempt += 1) {
        if ((await run('fusermount3', ['-u', fuseDir])).code === 0) break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * Attaches the export again, mounts it (replaying the journal), checks every
 * named file against its sha256, unmounts and runs e2fsck -fn.
 */
export async function verifyExt4(t: { is(actual: unknown, expected: unknown, message?: string): void }, uri: string, workDir: string,
  mountPoint: string, expected: Map<string, string>): Promise<void> {
  const attachment = await attachThroughFuse(uri, workDir);
  try {
    await attachment.mount(mountPoint);
    for (const [name, digest] of expected) {
      const actual = crypto.createHash('sha256').update(fs.readFileSync(path.join(mountPoint, name))).digest('hex');
      t.is(actual, digest, `${name} intact`);
    }
    await attachment.unmount(mountPoint);
    const fsck = await run('e2fsck', ['-fn', attachment.device], { timeoutMs: 120_000 });
    t.is(fsck.code, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`);
  } finally {
    await attachment.detach();
  }
}
