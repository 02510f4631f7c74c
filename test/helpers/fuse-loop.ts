import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { attachThroughFuse } from '../../tools/crash-test/fuse-loop.js';
import { run } from './tools.js';

export { attachThroughFuse, type LoopAttachment } from '../../tools/crash-test/fuse-loop.js';

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
