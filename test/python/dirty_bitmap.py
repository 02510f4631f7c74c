"""Reads a checkpoint's changed blocks through libnbd, as a Python backup
tool does: both contexts negotiated, block status over the whole export with
base:allocation and qemu:dirty-bitmap:NAME answered in one reply. Prints the
dirty extents as JSON [[offset, length], ...]."""
import json
import sys

import nbd

uri, checkpoint = sys.argv[1], sys.argv[2]
context = "qemu:dirty-bitmap:" + checkpoint
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.add_meta_context(context)
h.connect_uri(uri)
assert h.can_meta_context(context), context + " was not negotiated"
assert h.can_meta_context("base:allocation"), "base:allocation was not negotiated"
size = h.get_size()
dirty = []
seen = set()
answered_to = [0]


def extent(metacontext, offset, entries, err):
    seen.add(metacontext)
    if metacontext != context:
        return 0
    at = offset
    for i in range(0, len(entries), 2):
        length, flags = entries[i], entries[i + 1]
        if flags & 1:
            if dirty and dirty[-1][0] + dirty[-1][1] == at:
                dirty[-1][1] += length
            else:
                dirty.append([at, length])
        at += length
    answered_to[0] = at
    return 0


offset = 0
while offset < size:
    h.block_status(min(size - offset, 1 << 30), offset, extent)
    # A server may answer less than asked: go on from the end of the bitmap's answer.
    assert answered_to[0] > offset, "no progress at %d" % offset
    offset = answered_to[0]
assert seen == {context, "base:allocation"}, "one chunk per context: %r" % seen
print(json.dumps(dirty))
