import { crc32 } from 'node:zlib';
import { adminRequest } from '../admin-client.js';
import { run } from './process-tools.js';
import type { ServerProcess } from './server-process.js';

/** QEMU's granularity, which the checkpoints use (cbt/format.ts). */
const granuleBytes = 64 * 1024;
const checkpointsKept = 2;

/** A checkpoint the harness made, with each granule's checksum when it was created (the server idle). */
export interface CheckpointExpectation {
  name: string;
  granuleCrcs: Uint32Array;
}

function granuleCrcs(image: Buffer): Uint32Array {
  const crcs = new Uint32Array(Math.ceil(image.length / granuleBytes));
  for (let granule = 0; granule < crcs.length; granule += 1) {
    crcs[granule] = crc32(image.subarray(granule * granuleBytes, (granule + 1) * granuleBytes));
  }
  return crcs;
}

async function dirtyGranules(server: ServerProcess, name: string): Promise<Set<number>> {
  const map = await run('nbdinfo', ['--json', `--map=qemu:dirty-bitmap:${name}`, server.uri('crash')], { timeoutMs: 60_000 });
  if (map.code !== 0) throw new Error(`nbdinfo --map=qemu:dirty-bitmap:${name}: ${map.stderr}`);
  const dirty = new Set<number>();
  for (const extent of JSON.parse(map.stdout) as Array<{ offset: number; length: number; type: number }>) {
    if ((extent.type & 1) === 0) continue;
    for (let at = extent.offset; at < extent.offset + extent.length; at += granuleBytes) dirty.add(Math.floor(at / granuleBytes));
  }
  return dirty;
}

/**
 * Invariant 6: no false clean. Every granule whose content differs from its
 * content when a checkpoint was created must be reported dirty in that
 * checkpoint's qemu:dirty-bitmap context, after whatever crash came between.
 */
export async function checkpointsHoldChanges(server: ServerProcess, image: Buffer, expectations: CheckpointExpectation[]): Promise<string> {
  if (expectations.length === 0) return 'n/a';
  const now = granuleCrcs(image);
  for (const expectation of expectations) {
    const dirty = await dirtyGranules(server, expectation.name);
    const falseClean: number[] = [];
    for (let granule = 0; granule < now.length; granule += 1) {
      if (now[granule] !== expectation.granuleCrcs[granule] && !dirty.has(granule)) falseClean.push(granule);
    }
    if (falseClean.length > 0) {
      return `fail: checkpoint ${expectation.name} reports ${falseClean.length} changed granules clean ` +
        `(at bytes ${falseClean.slice(0, 4).map((granule) => granule * granuleBytes).join(', ')})`;
    }
  }
  return 'pass';
}

/**
 * Between iterations, with the server idle: the oldest checkpoint is removed
 * once two exist (or by the seed), and a new one is created, its granules'
 * checksums taken from `image`, read with nothing written since.
 */
export async function rotateCheckpoints(admin: string, image: Buffer, expectations: CheckpointExpectation[], iteration: number,
  seed: number): Promise<string[]> {
  const notes: string[] = [];
  if (expectations.length >= checkpointsKept || (expectations.length > 0 && seed % 3 === 0)) {
    const oldest = expectations.shift()!;
    await adminRequest(admin, { command: 'checkpoint-remove', name: oldest.name }, undefined, 30_000);
    notes.push(`checkpoint ${oldest.name} removed`);
  }
  const name = `it${iteration}`;
  await adminRequest(admin, { command: 'checkpoint-create', name }, undefined, 30_000);
  expectations.push({ name, granuleCrcs: granuleCrcs(image) });
  notes.push(`checkpoint ${name} created; the next iterations check that no change since is reported clean`);
  return notes;
}
