"""Pipelines reads of mixed sizes (small ones copied, large ones sent by
sendfile) through libnbd with structured replies off or on, and checks each
against the export's backing file. Exits non-zero on the first difference."""
import random
import sys

import nbd

uri, mode, backing, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
h = nbd.NBD()
h.set_request_structured_replies(mode == "on")
h.connect_uri(uri)
assert h.get_structured_replies_negotiated() == (mode == "on"), "structured reply negotiation"
size = h.get_size()
with open(backing, "rb") as f:
    expected = f.read()
assert len(expected) == size, "backing file is the export's size"

rng = random.Random(seed)
sizes = [512, 4096, 65536, 131071, 131072, 262144, 1 << 20, (3 << 20) + 7]
pending = []
for _ in range(200):
    length = rng.choice(sizes)
    offset = rng.randrange(0, size - length + 1)
    buf = nbd.Buffer(length)
    cookie = h.aio_pread(buf, offset)
    pending.append((cookie, buf, offset, length))
    # Keep up to 16 in flight, so replies of both kinds interleave on the wire.
    while h.aio_in_flight() >= 16:
        h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
for cookie, buf, offset, length in pending:
    assert h.aio_command_completed(cookie), f"read at {offset} completed"
    if buf.to_bytearray() != expected[offset:offset + length]:
        sys.exit(f"read of {length} at {offset} differs from the backing file")
h.shutdown()
print("ok")
