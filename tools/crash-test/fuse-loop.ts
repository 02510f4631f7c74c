import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { run, runOk } from './process-tools.js';

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
export async function attachThroughFuse(uri: string, workDir: string,
  window: { offsetBytes: number; sizeBytes: number } | undefined = undefined): Promise<LoopAttachment> {
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
    const windowArgs = window ? ['--offset', String(window.offsetBytes), '--sizelimit', String(window.sizeBytes)] : [];
    device = (await runOk('losetup', ['--find', '--show', ...windowArgs, image])).stdout.trim();
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

