"""Two connections hammer overlapping blocks with writes, FUA writes,
trims, zeroes and flushes until the time runs out or the server dies
(a crash test kills it). Exits 0 either way; prints how many requests
completed. An optional fifth argument names a file created once the first
request has completed, so a crash test can time its kill from real progress
rather than from process start (python and libnbd start slowly on a loaded
machine)."""
import os
import random
import sys
import time

import nbd

uri, seed, seconds, hot_bytes = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
progress_file = sys.argv[5] if len(sys.argv) > 5 else None
rng = random.Random(seed)
handles = []
for _ in range(2):
    h = nbd.NBD()
    h.connect_uri(uri)
    handles.append(h)
payloads = [bytes([value]) * (64 * 1024) for value in range(256)]
done = 0
deadline = time.monotonic() + seconds
try:
    while time.monotonic() < deadline:
        for h in handles:
            while h.aio_in_flight() < 16:
                length = rng.choice([4096, 8192, 16384, 65536, 512 * rng.randint(1, 16)])
                offset = rng.randrange(0, hot_bytes - length, 512)
                kind = rng.random()
                if kind < 0.8:
                    flags = nbd.CMD_FLAG_FUA if rng.random() < 0.1 else 0
                    h.aio_pwrite(payloads[rng.randrange(256)][:length], offset, flags=flags)
                elif kind < 0.88:
                    h.aio_trim(length, offset)
                elif kind < 0.95:
                    h.aio_zero(length, offset)
                else:
                    h.aio_flush()
            h.poll(0)
            while h.aio_peek_command_completed():
                h.aio_command_completed(h.aio_peek_command_completed())
                done += 1
                if done == 1 and progress_file:
                    os.close(os.open(progress_file, os.O_CREAT | os.O_WRONLY))
        handles[0].poll(1)
except nbd.Error:
    pass
print(done)
