import fs from 'node:fs';
import { run } from '../test/helpers/tools.js';

/**
 * Puts a server's backing files in one known page-cache state before a job.
 * The kernel's cached state of a file decides much of what a job measures:
 * on this kernel, 4k writes into a file whose cache holds large folios (left
 * by 1 MiB writes) ran 4x slower than into the same file uncached, so two
 * servers whose files had different histories could not be compared. Each
 * job therefore starts with the files written back and dropped from the
 * cache, and read jobs then read them through once, so they measure the
 * server, not the virtual disk.
 */
export async function settleFiles(files: string[], warm: boolean): Promise<void> {
  // Node has no posix_fadvise; Debian's python3 has.
  const evict = 'import os,sys\nfor p in sys.argv[1:]:\n fd=os.open(p,os.O_RDWR)\n os.fdatasync(fd)\n' +
    ' os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)\n os.close(fd)';
  const result = await run('/usr/bin/python3', ['-c', evict, ...files], { timeoutMs: 300_000 });
  if (result.code !== 0) throw new Error(`could not drop ${files.join(', ')} from the page cache: ${result.stderr}`);
  if (!warm) return;
  const chunk = Buffer.allocUnsafe(8 << 20);
  for (const file of files) {
    const fd = fs.openSync(file, 'r');
    try {
      while (fs.readSync(fd, chunk, 0, chunk.length, null) > 0) { /* reading is the point */ }
    } finally {
      fs.closeSync(fd);
    }
  }
}
