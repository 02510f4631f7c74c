"""The crash test's raw workload, driven through libnbd (a real client).

  run URI SEED SECONDS AREA_START AREA_BYTES FIRST_ID JOURNAL [--final-flush]
      Two connections issue writes, FUA writes, trims, write-zeroes and
      flushes, up to 16 in flight each, until the time is up or the server
      dies. Ranges in flight never overlap, so each sector's operations apply
      in the order they were sent. Every 512-byte sector written describes
      itself (magic, operation id, sector number, CRC), so a reader can tell
      which operation's bytes a sector holds. The journal (JSON lines) records
      each operation with CLOCK_MONOTONIC send and acknowledgement times.

  files DIR SEED SECONDS PREFIX
      Writes files into a mounted filesystem: each one written, fsynced, and
      its directory fsynced, then printed as "name sha256" (so a printed file
      was durable before the crash), with unsynced files in between.

  stable-reads URI SEED AREA_START AREA_BYTES BLOCKS
      Reads BLOCKS random 4 KiB blocks twice each, back to back (the mirror
      balances the two reads over different legs), and prints how many
      differed, as JSON.
"""
import json
import random
import struct
import sys
import time
import zlib

import nbd

SECTOR = 512
BLOCK = 4096
MAGIC = b'NBDMCTS1'


def sector_bytes(op_id, sector):
    filler = struct.pack('<Q', (op_id * 0x9E3779B97F4A7C15 + sector * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF)
    body = (filler * 61)[:SECTOR - 28]
    head = MAGIC + struct.pack('<QQ', op_id, sector)
    crc = zlib.crc32(body, zlib.crc32(head))
    return head + struct.pack('<I', crc) + body


def payload(op_id, offset, length):
    first = offset // SECTOR
    return b''.join(sector_bytes(op_id, first + index) for index in range(length // SECTOR))


def overlaps(busy, start, end):
    return any(start < other_end and other_start < end for other_start, other_end in busy.values())


def run(uri, seed, seconds, area_start, area_bytes, first_id, journal_path, final_flush):
    rng = random.Random(seed)
    handles = []
    for _ in range(2):
        handle = nbd.NBD()
        try:
            handle.connect_uri(uri)
        except nbd.Error as error:
            if final_flush:
                raise
            # A crash planned early in the run can come before this process (slow to start on a loaded machine)
            # connects: nothing was sent, so nothing was promised. The harness reports how the server ended.
            print('# no connection before the crash: %s' % error, file=sys.stderr)
            for other in handles:
                try:
                    other.shutdown()
                except nbd.Error:
                    pass  # the server is gone: there is nothing to shut down politely
            open(journal_path, 'w').close()
            print(json.dumps({'ops': 0, 'acked': 0, 'nextId': first_id, 'serverAlive': False}))
            return
        handles.append(handle)
    ops = {}
    busy = {}
    next_id = first_id
    deadline = time.monotonic() + seconds
    blocks = area_bytes // BLOCK
    alive = True

    def issue(handle):
        nonlocal next_id
        op_id = next_id
        next_id += 1
        kind = rng.random()
        if kind < 0.1:
            ops[op_id] = {'id': op_id, 'op': 'flush', 'sent': time.monotonic_ns(), 'acked': None, 'err': None}
            cookie = handle.aio_flush()
            return cookie, op_id
        # Most requests land in a window that moves every quarter second, so
        # regions go quiet behind it and the sweeper clears them while others are busy.
        window_blocks = max(16, blocks // 8)
        window = int(time.monotonic() * 4) * 7919 % max(1, blocks - window_blocks + 1)
        for _ in range(8):
            count = rng.choice([1, 1, 1, 2, 4, 8, 16])
            if rng.random() < 0.9:
                start = area_start + (window + rng.randrange(0, window_blocks - count + 1)) * BLOCK
            else:
                start = area_start + rng.randrange(0, blocks - count + 1) * BLOCK
            end = start + count * BLOCK
            if not overlaps(busy, start, end):
                break
        else:
            return None, None
        fua = rng.random() < 0.15
        flags = nbd.CMD_FLAG_FUA if fua else 0
        if kind < 0.82:
            op = 'write'
        elif kind < 0.91:
            op = 'trim'
        else:
            op = 'zero'
        ops[op_id] = {'id': op_id, 'op': op, 'fua': fua, 'off': start, 'len': end - start,
                      'sent': time.monotonic_ns(), 'acked': None, 'err': None}
        busy[op_id] = (start, end)
        if op == 'write':
            cookie = handle.aio_pwrite(payload(op_id, start, end - start), start, flags=flags)
        elif op == 'trim':
            cookie = handle.aio_trim(end - start, start, flags=flags)
        else:
            cookie = handle.aio_zero(end - start, start, flags=flags)
        return cookie, op_id

    cookies = [{} for _ in handles]

    def reap(index, handle):
        while True:
            cookie = handle.aio_peek_command_completed()
            if not cookie:
                return
            op_id = cookies[index].pop(cookie)
            entry = ops[op_id]
            try:
                handle.aio_command_completed(cookie)
                entry['acked'] = time.monotonic_ns()
            except nbd.Error as error:
                entry['err'] = str(error)
            busy.pop(op_id, None)

    try:
        while time.monotonic() < deadline:
            for index, handle in enumerate(handles):
                while handle.aio_in_flight() < 16:
                    cookie, op_id = issue(handle)
                    if cookie is None:
                        break
                    cookies[index][cookie] = op_id
                handle.poll(0)
                reap(index, handle)
            handles[0].poll(1)
        for index, handle in enumerate(handles):
            while handle.aio_in_flight() > 0:
                handle.poll(-1)
                reap(index, handle)
        if final_flush:
            op_id = next_id
            next_id += 1
            ops[op_id] = {'id': op_id, 'op': 'flush', 'sent': time.monotonic_ns(), 'acked': None, 'err': None}
            handles[0].flush()
            ops[op_id]['acked'] = time.monotonic_ns()
    except nbd.Error as error:
        # The server died (the crash test killed it): whatever was not acknowledged stays unacknowledged.
        alive = False
        for op_id in busy:
            ops[op_id]['err'] = ops[op_id]['err'] or 'connection lost: %s' % error
    with open(journal_path, 'w') as journal:
        for entry in ops.values():
            journal.write(json.dumps(entry) + '\n')
    print(json.dumps({'ops': len(ops), 'acked': sum(1 for entry in ops.values() if entry['acked']),
                      'nextId': next_id, 'serverAlive': alive}))


def stable_reads(uri, seed, area_start, area_bytes, count):
    rng = random.Random(seed)
    handle = nbd.NBD()
    handle.connect_uri(uri)
    mismatches = []
    compared = 0
    for _ in range(count):
        offset = area_start + rng.randrange(0, area_bytes // BLOCK) * BLOCK
        first = handle.pread(BLOCK, offset)
        second = handle.pread(BLOCK, offset)
        compared += 1
        if first != second:
            mismatches.append(offset)
    print(json.dumps({'compared': compared, 'mismatches': mismatches}))


def files(directory, seed, seconds, prefix):
    import hashlib
    import os
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    index = 0
    try:
        while time.monotonic() < deadline:
            # Small files: a writer still has room, and is still writing, when its crash comes.
            content = rng.randbytes(4096 * rng.randint(1, 16))
            name = '%s-%d.bin' % (prefix, index)
            index += 1
            if rng.random() < 0.3:
                with open(os.path.join(directory, name + '.unsynced'), 'wb') as handle:
                    handle.write(content)
                continue
            descriptor = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            # write() may write less than asked (ext4 under memory or signal pressure does); the rest follows.
            view = memoryview(content)
            written = 0
            while written < len(content):
                count = os.write(descriptor, view[written:])
                if written + count < len(content):
                    print('# short write: %s took %d of %d bytes' % (name, count, len(content) - written), flush=True)
                written += count
            os.fsync(descriptor)
            os.close(descriptor)
            directory_descriptor = os.open(directory, os.O_RDONLY)
            os.fsync(directory_descriptor)
            os.close(directory_descriptor)
            print(name, hashlib.sha256(content).hexdigest(), flush=True)
    except OSError as error:
        # Normally the device went away under the filesystem (the crash came); say so, in case it was not.
        print('# stopped: %s' % error, flush=True)


if __name__ == '__main__':
    mode = sys.argv[1]
    if mode == 'run':
        run(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]),
            sys.argv[8], '--final-flush' in sys.argv[9:])
    elif mode == 'files':
        files(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    elif mode == 'stable-reads':
        stable_reads(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    else:
        sys.exit('unknown mode %s' % mode)
