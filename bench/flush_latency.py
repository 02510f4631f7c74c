"""Dirties N random 4 KiB pages with plain writes, then times one flush.
Prints JSON: the flush's wall time and how many pages it covered."""
import json
import random
import sys
import time

import nbd

uri, pages = sys.argv[1], int(sys.argv[2])
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
rng = random.Random(5)
block = rng.randbytes(4096)
offsets = [rng.randrange(size // 4096) * 4096 for _ in range(pages)]
h.flush()
started = time.monotonic()
for offset in offsets:
    h.aio_pwrite(block, offset)
    while h.aio_in_flight() > 64:
        h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
written = time.monotonic()
h.flush()
flushed = time.monotonic()
print(json.dumps({"pages": pages, "writeSeconds": written - started, "flushSeconds": flushed - written}))
h.shutdown()
