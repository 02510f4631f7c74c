"""Drives every NBD command and flag through libnbd, as the kernel would
(structured replies off) or as qemu/libnbd tools do (on). Exits non-zero
with a message on the first wrong answer."""
import errno
import os
import random
import sys

import nbd

uri, mode = sys.argv[1], sys.argv[2]
structured = mode == "on"
# Without the native addon the server cannot see holes; everything else must hold.
# A block-device leg has no holes to see (no SEEK_DATA), but zeroes by fallocate as a file does.
holes_visible = "portable" not in sys.argv[3:] and "blockdev" not in sys.argv[3:]
fast_zero = "portable" not in sys.argv[3:]
MiB = 1 << 20


def expect_error(expected, what, call):
    try:
        call()
    except nbd.Error as error:
        # libnbd reports the errno by name ("EINVAL").
        if error.errno not in (expected, errno.errorcode[expected]):
            sys.exit(f"{what}: expected errno {expected}, got {error.errno} ({error})")
        return
    sys.exit(f"{what}: expected an error, the request succeeded")


h = nbd.NBD()
h.set_request_structured_replies(structured)
if structured:
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
assert h.get_structured_replies_negotiated() == structured, "structured reply negotiation"
size = h.get_size()
assert h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero(), "write flags advertised"
assert h.can_multi_conn() and h.can_cache(), "multi-conn and cache advertised"
assert h.can_fast_zero() == fast_zero, "fast zero advertised only when zeroing is cheap"
assert not h.is_read_only(), "export is writable"
if structured:
    assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation negotiated"
    assert h.can_df(), "DF advertised with structured replies"

rng = random.Random(42)
data = rng.randbytes(256 * 1024)

# WRITE / READ, plain and FUA, aligned and not.
h.pwrite(data, 1 * MiB)
assert h.pread(len(data), 1 * MiB) == data, "read back a 256 KiB write"
h.pwrite(data[:3000], 5 * MiB + 77, nbd.CMD_FLAG_FUA)
assert h.pread(3000, 5 * MiB + 77) == data[:3000], "unaligned FUA write"
h.pwrite(b"\xee", size - 1)
assert h.pread(1, size - 1) == b"\xee", "last byte"
h.flush()

# TRIM, then reads return zeroes (the file leg punches holes).
h.pwrite(data, 8 * MiB)
h.trim(len(data), 8 * MiB)
assert h.pread(len(data), 8 * MiB) == bytes(len(data)), "trimmed range reads zeroes"
h.pwrite(data, 8 * MiB)
h.trim(len(data), 8 * MiB, nbd.CMD_FLAG_FUA)
assert h.pread(len(data), 8 * MiB) == bytes(len(data)), "FUA trim reads zeroes"

# WRITE_ZEROES with every flag combination.
zero_flags = [0, nbd.CMD_FLAG_NO_HOLE, nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_NO_HOLE]
if fast_zero:
    zero_flags.append(nbd.CMD_FLAG_FAST_ZERO)
for flags in zero_flags:
    h.pwrite(data, 12 * MiB)
    h.zero(100_000, 12 * MiB + 5, flags)
    got = h.pread(len(data), 12 * MiB)
    assert got[:5] == data[:5] and got[5:100_005] == bytes(100_000) and got[100_005:] == data[100_005:], \
        f"write-zeroes flags {flags}"

# CACHE is accepted over a large range.
h.cache(16 * MiB, 0)

# Server-side validation: turn off libnbd's own checks so the server sees the bad requests.
h.set_strict_mode(0)
expect_error(errno.EINVAL, "read past the end", lambda: h.pread(4096, size - 100))
expect_error(errno.ENOSPC, "write past the end", lambda: h.pwrite(b"x" * 4096, size - 100))
expect_error(errno.ENOSPC, "write-zeroes past the end", lambda: h.zero(8192, size - 4096))
expect_error(errno.EINVAL, "trim past the end", lambda: h.trim(8192, size - 4096))
expect_error(errno.EINVAL, "read of 33 MiB", lambda: h.pread(33 * MiB, 0))
expect_error(errno.EINVAL, "offset overflowing 64 bits", lambda: h.pread(4096, (1 << 64) - 2048))
expect_error(errno.EINVAL, "unknown flag on read", lambda: h.pread(4096, 0, 1 << 9))
if not structured:
    expect_error(errno.EINVAL, "DF without structured replies", lambda: h.pread(4096, 0, nbd.CMD_FLAG_DF))
# After all that, framing must be intact.
assert h.pread(3000, 5 * MiB + 77) == data[:3000], "connection still framed after errors"
h.set_strict_mode(nbd.STRICT_MASK)

if structured:
    # DF read: one content chunk.
    chunks = []
    h.pread_structured(65536, 1 * MiB, lambda sub, off, status, err: chunks.append((off, len(sub), status)) or 0,
                       nbd.CMD_FLAG_DF)
    assert len(chunks) == 1 and chunks[0][0] == 1 * MiB, f"DF read gave one chunk, got {chunks}"
    # Sparse read: a hole in the middle comes back as an OFFSET_HOLE chunk.
    h.zero(8 * MiB, 32 * MiB)
    h.pwrite(data[:65536], 32 * MiB)
    h.pwrite(data[:65536], 40 * MiB - 65536)
    chunks = []
    got = h.pread_structured(8 * MiB, 32 * MiB, lambda sub, off, status, err: chunks.append((off, len(sub), status)) or 0)
    assert got[:65536] == data[:65536] and got[65536:-65536] == bytes(8 * MiB - 131072), "sparse read content"
    if holes_visible:
        assert any(status == nbd.READ_HOLE for _, _, status in chunks), f"sparse read used a hole chunk: {chunks}"
    # Block status over the same area: data, hole, data.
    extents = []
    h.block_status(8 * MiB, 32 * MiB, lambda ctx, off, entries, err: extents.extend(entries) or 0)
    lengths, flags = extents[0::2], extents[1::2]
    assert sum(lengths) == 8 * MiB, f"block status covers the range: {extents}"
    if holes_visible:
        assert flags[0] == 0 and (flags[1] & 1) and flags[-1] == 0, f"data, hole, data: {extents}"
    one = []
    h.block_status(8 * MiB, 32 * MiB, lambda ctx, off, entries, err: one.extend(entries) or 0, nbd.CMD_FLAG_REQ_ONE)
    assert len(one) == 2 and one[1] == 0, f"REQ_ONE gives one extent: {one}"
    if holes_visible:
        assert one[0] == 65536, f"REQ_ONE extent ends at the hole: {one}"

# Pipelining: many requests in flight, completions matched by cookie.
buffers = {}
for i in range(64):
    block = rng.randbytes(4096)
    buffers[i] = block
    h.aio_pwrite(block, 64 * MiB + i * 4096)
while h.aio_in_flight() > 0:
    h.poll(-1)
reads = {}
for i in range(64):
    buf = nbd.Buffer(4096)
    cookie = h.aio_pread(buf, 64 * MiB + i * 4096)
    reads[cookie] = (i, buf)
done = 0
while done < 64:
    h.poll(-1)
    for cookie, (i, buf) in list(reads.items()):
        if h.aio_command_completed(cookie):
            assert buf.to_bytearray() == buffers[i], f"pipelined read {i} matched its cookie"
            del reads[cookie]
            done += 1

# Overlapping writes sent back to back on one connection land in order.
for i in range(32):
    h.aio_pwrite(bytes([i]) * 8192, 70 * MiB)
while h.aio_in_flight() > 0:
    h.poll(-1)
assert h.pread(8192, 70 * MiB) == bytes([31]) * 8192, "overlapping writes applied in arrival order"

h.flush()
h.shutdown()
print("ok")
