"""Fills a thin-provisioned export through libnbd until the server answers
ENOSPC, then (second phase, after the pool grew) retries the flush and
checks every acknowledged byte. Prints one JSON line; exits non-zero with a
message on the first wrong answer."""
import errno
import json
import random
import sys

import nbd

uri, phase = sys.argv[1], sys.argv[2]
MiB = 1 << 20
BLOCK = MiB


def pattern(index):
    return random.Random(index).randbytes(BLOCK)


def errno_of(error):
    return error.errno if isinstance(error.errno, str) else errno.errorcode.get(error.errno, str(error.errno))


h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()

if phase == "fill":
    durable = int(sys.argv[3])
    acked = 0
    write_errno = None
    for index in range(size // BLOCK):
        try:
            h.pwrite(pattern(index), index * BLOCK)
        except nbd.Error as error:
            write_errno = errno_of(error)
            break
        acked = index + 1
        if acked == durable:
            h.flush()  # must succeed: the pool still has room for these
    flush_errno = None
    try:
        h.flush()
    except nbd.Error as error:
        flush_errno = errno_of(error)
    # Everything acknowledged still reads back (from the cache, or the legs), space or not.
    for index in range(acked):
        if h.pread(BLOCK, index * BLOCK) != pattern(index):
            sys.exit(f"block {index} read back wrong before the pool grew")
    print(json.dumps({"acked": acked, "writeErrno": write_errno, "flushErrno": flush_errno}))
elif phase == "verify":
    acked = int(sys.argv[3])
    h.flush()  # the retried flush: must succeed now
    for index in range(acked):
        if h.pread(BLOCK, index * BLOCK) != pattern(index):
            sys.exit(f"block {index} lost after the pool grew")
    for index in range(acked, acked + 8):
        h.pwrite(pattern(index), index * BLOCK)
    h.flush()
    for index in range(acked + 8):
        if h.pread(BLOCK, index * BLOCK) != pattern(index):
            sys.exit(f"block {index} wrong after writing more")
    print(json.dumps({"verified": acked + 8}))
else:
    sys.exit(f"unknown phase {phase}")
h.shutdown()
