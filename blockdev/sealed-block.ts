import { crc32 } from 'node:zlib';

/**
 * The header our 4 KiB on-disk blocks share (leg labels, thin superblocks
 * and map pages): an 8-byte magic at 0, a version at 8, and at 12 a CRC-32 of
 * the whole block computed with those four bytes zero.
 */
const crcOffset = 12;

/** Stamps the checksum into a fully encoded block and returns it. */
export function seal(block: Buffer): Buffer {
  block.writeUInt32LE(0, crcOffset);
  block.writeUInt32LE(crc32(block), crcOffset);
  return block;
}

/** Why the block is not a valid `what` of this magic and version, or undefined when it is. */
export function sealProblem(block: Buffer, magic: Buffer, version: number, what: string): string | undefined {
  if (!block.subarray(0, magic.length).equals(magic)) return `${what}: bad magic`;
  const found = block.readUInt32LE(8);
  if (found !== version) return `${what}: unsupported version ${found}`;
  const copy = Buffer.from(block);
  const stored = copy.readUInt32LE(crcOffset);
  copy.writeUInt32LE(0, crcOffset);
  if (crc32(copy) !== stored) return `${what}: checksum mismatch`;
  return undefined;
}
