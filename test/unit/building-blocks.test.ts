import fc from 'fast-check';
import test from 'ava';
import { InlineWriteGate } from '../../backends/inline-write-gate.js';
import { GroupCommit } from '../../blockdev/group-commit.js';
import { IntrusiveList } from '../../blockdev/intrusive-list.js';
import { RangeOrder } from '../../blockdev/range-order.js';
import { BufferPool } from '../../blockdev/buffer-pool.js';
import { InputQueue } from '../../nbd/input-queue.js';
import { validateRequest } from '../../nbd/requests.js';
import { TransmissionFlag } from '../../nbd/constants.js';

test('GroupCommit: a caller arriving during a round is covered by the next round, and rounds are shared', async (t) => {
  const events: string[] = [];
  let release: (() => void) | undefined;
  let rounds = 0;
  const group = new GroupCommit(async () => {
    rounds += 1;
    const round = rounds;
    events.push(`start ${round}`);
    await new Promise<void>((resolve) => { release = resolve; });
    events.push(`end ${round}`);
  });
  const first = group.run();
  await Promise.resolve();
  await new Promise((resolve) => setImmediate(resolve));
  const second = group.run();
  const third = group.run();
  release!();
  await first;
  t.deepEqual(events, ['start 1', 'end 1']);
  await new Promise((resolve) => setImmediate(resolve));
  t.deepEqual(events, ['start 1', 'end 1', 'start 2'], 'late callers wait for a round that starts after them');
  release!();
  await Promise.all([second, third]);
  t.is(group.roundsRun, 2, 'second and third shared one round');
});

test('GroupCommit: a failed round rejects exactly its callers', async (t) => {
  let fail = true;
  const group = new GroupCommit(async () => { if (fail) throw new Error('EIO'); });
  await t.throwsAsync(group.run(), { message: 'EIO' });
  fail = false;
  await t.notThrowsAsync(group.run());
});

test('RangeOrder: overlapping writes wait in arrival order; disjoint ones and read/read pairs do not', async (t) => {
  const order = new RangeOrder();
  const a = order.acquire(0, 4096, true);
  const b = order.acquire(4096, 4096, true);
  const readA = order.acquire(0, 100, false);
  const readB = order.acquire(50, 100, false);
  t.is(a.ready, undefined);
  t.is(b.ready, undefined, 'adjacent ranges do not overlap');
  t.not(readA.ready, undefined, 'a read waits for an earlier overlapping write');
  const c = order.acquire(1000, 5000, true);
  t.not(c.ready, undefined);
  let cReady = false;
  void c.ready!.then(() => { cReady = true; });
  a.release();
  await readA.ready;
  await new Promise((resolve) => setImmediate(resolve));
  t.false(cReady, 'c still waits for b and the reads');
  b.release();
  readA.release();
  readB.release();
  await c.ready;
  c.release();
  t.is(order.size, 0);
  t.is(order.acquire(0, 0, true).ready, undefined, 'zero-length ranges never wait');
});

test('RangeOrder: random acquires and out-of-order releases match a model of who waits for whom', async (t) => {
  const step = fc.oneof(
    fc.record({ kind: fc.constant('acquire' as const), start: fc.integer({ min: 0, max: 60 }), length: fc.integer({ min: 0, max: 20 }),
      mutating: fc.boolean() }),
    fc.record({ kind: fc.constant('release' as const), pick: fc.nat() }),
  );
  await fc.assert(fc.asyncProperty(fc.array(step, { maxLength: 60 }), async (steps) => {
    const order = new RangeOrder();
    interface Held { start: number; end: number; mutating: boolean; blockers: Set<Held>; ready: boolean; release: () => void }
    const held: Held[] = [];
    const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
    for (const action of steps) {
      if (action.kind === 'acquire') {
        const end = action.start + action.length;
        const blockers = new Set(action.length === 0 ? [] : held.filter((other) => (action.mutating || other.mutating) &&
          other.start < end && action.start < other.end));
        const ticket = order.acquire(action.start, action.length, action.mutating);
        if ((ticket.ready === undefined) !== (blockers.size === 0)) return false;
        const entry: Held = { start: action.start, end, mutating: action.mutating, blockers, ready: ticket.ready === undefined,
          release: ticket.release };
        void ticket.ready?.then(() => { entry.ready = true; });
        held.push(entry);
      } else if (held.length > 0) {
        const [gone] = held.splice(action.pick % held.length, 1);
        gone.release();
        for (const other of held) other.blockers.delete(gone);
      }
      await settle();
      if (order.size !== held.length) return false;
      if (held.some((entry) => entry.ready !== (entry.blockers.size === 0))) return false;
    }
    return true;
  }), { numRuns: 200 });
  t.pass();
});

test('IntrusiveList: pushes, removals and moves from anywhere keep the order an array model keeps', (t) => {
  interface Node { id: number; listPrevious: Node | undefined; listNext: Node | undefined; list: object | undefined }
  const action = fc.record({ kind: fc.constantFrom('push', 'remove', 'move', 'visitRemove'), node: fc.integer({ min: 0, max: 9 }) });
  fc.assert(fc.property(fc.array(action, { maxLength: 80 }), (actions) => {
    const nodes: Node[] = Array.from({ length: 10 }, (_, id) => ({ id, listPrevious: undefined, listNext: undefined, list: undefined }));
    const list = new IntrusiveList<Node>();
    const other = new IntrusiveList<Node>();
    let model: number[] = [];
    for (const { kind, node: id } of actions) {
      const node = nodes[id];
      if (kind === 'push' && node.list === undefined) {
        list.pushBack(node);
        model.push(id);
      } else if (kind === 'remove') {
        if (other.remove(node)) return false;
        if (list.remove(node) !== model.includes(id)) return false;
        model = model.filter((entry) => entry !== id);
      } else if (kind === 'move' && list.has(node)) {
        list.moveToBack(node);
        model = [...model.filter((entry) => entry !== id), id];
      } else if (kind === 'visitRemove') {
        // A walk that removes the page it is on still visits every page once.
        const visited: number[] = [];
        for (const visiting of list) {
          visited.push(visiting.id);
          if (visiting.id % 2 === id % 2) list.remove(visiting);
        }
        if (visited.join() !== model.join()) return false;
        model = model.filter((entry) => entry % 2 !== id % 2);
      }
      if (list.size !== model.length || list.first?.id !== model[0]) return false;
      if ([...list].map((entry) => entry.id).join() !== model.join()) return false;
    }
    return true;
  }), { numRuns: 300 });
  const lone = { listPrevious: undefined, listNext: undefined, list: undefined };
  const list = new IntrusiveList();
  list.pushBack(lone);
  t.throws(() => list.pushBack(lone), { message: /already on a list/ });
});

test('InputQueue: views within a chunk, copies across chunks, skips', (t) => {
  const queue = new InputQueue();
  queue.push(Buffer.from('abcdef'));
  queue.push(Buffer.from('ghij'));
  t.is(queue.take(2).toString(), 'ab');
  t.is(queue.takeIfContiguous(6), undefined, 'spans two chunks');
  t.is(queue.take(6).toString(), 'cdefgh');
  t.is(queue.skip(5), 2);
  t.is(queue.length, 0);
});

test('BufferPool: reuses released buffers and bounds idle memory', (t) => {
  const pool = new BufferPool(1 << 20);
  const first = pool.acquire(100_000);
  t.is(first.buffer.length, 100_000);
  const underlying = first.buffer.buffer;
  first.release();
  t.throws(() => first.release(), { message: /twice/ });
  const second = pool.acquire(120_000);
  t.is(second.buffer.buffer, underlying, 'same size class is reused');
  const huge = pool.acquire(4 << 20);
  huge.release();
  t.true(pool.idleBytesNow <= 1 << 20, 'a buffer above the idle bound is dropped');
  second.release();
});

const context = {
  sizeBytes: 1 << 20,
  transmissionFlags: TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH,
  structuredReplies: false,
  blockStatusNegotiated: false,
};
const request = (type: number, offset: bigint, lengthBytes: number, flags = 0) =>
  validateRequest({ type, offset, lengthBytes, flags, cookie: 1n }, context);

test('validateRequest follows the spec errors', (t) => {
  t.deepEqual(request(0, 0n, 4096), { ok: true, offsetBytes: 0 });
  t.like(request(0, 1n << 20n, 1), { ok: false, error: 22 });
  t.like(request(1, (1n << 20n) - 1n, 2), { ok: false, error: 28 }, 'write past the end is ENOSPC');
  t.like(request(6, (1n << 20n) - 1n, 2), { ok: false, error: 28 }, 'write-zeroes past the end is ENOSPC');
  t.like(request(4, (1n << 20n) - 1n, 2), { ok: false, error: 22 }, 'trim past the end is EINVAL');
  t.like(request(0, (1n << 64n) - 1n, 4096), { ok: false, error: 22 }, 'offset overflow');
  t.like(request(42, 0n, 0), { ok: false, error: 22 }, 'unknown command');
  t.like(request(1, 0n, 33 << 20), { ok: false, error: 22 }, 'oversized write');
  t.like(request(0, 0n, 512, 1 << 2), { ok: false, error: 22 }, 'DF without structured replies');
  t.like(request(6, 0n, 512, 1 << 4), { ok: false, error: 22 }, 'FAST_ZERO not advertised');
  t.like(request(7, 0n, 512), { ok: false, error: 22 }, 'block status without a context');
  t.like(request(3, 0n, 1), { ok: false, error: 22 }, 'flush with a length');
  t.like(request(0, 0n, 512, 1 << 1), { ok: false, error: 22 }, 'NO_HOLE on a read');
  t.deepEqual(request(4, 0n, 0xffffffff >>> 12), { ok: true, offsetBytes: 0 }, 'large trims inside the export are fine');
  const readOnly = { ...context, transmissionFlags: context.transmissionFlags | TransmissionFlag.READ_ONLY };
  t.like(validateRequest({ type: 1, offset: 0n, lengthBytes: 1, flags: 0, cookie: 1n }, readOnly), { ok: false, error: 1 });
});

test('InlineWriteGate: a lone stall pauses inline writes briefly; stalls right after each pause escalate to 100x', (t) => {
  const gate = new InlineWriteGate();
  t.true(gate.open(0));
  t.is(gate.record(0.5, 100), 0, 'a write under 1 ms is no stall');
  t.true(gate.open(100));
  t.is(gate.record(20, 1000), 200, 'a lone 20 ms stall: 10 times as long');
  t.false(gate.open(1199));
  t.true(gate.open(1200));
  // Throttling: each time writes come back, they stall again at once.
  t.is(gate.record(2, 1201), 40, 'second stall of the episode: 20x');
  t.is(gate.record(2, 1242), 80, 'third: 40x');
  t.is(gate.record(2, 1323), 160, 'fourth: 80x');
  t.is(gate.record(2, 1484), 200, 'then 100x at most');
  t.is(gate.record(30, 1700), 2000, 'never more than 2 s');
  t.false(gate.open(3699));
  // A quiet second after the pause ends starts a new episode.
  t.is(gate.record(2, 4800), 20, 'a later lone stall is short again');
  t.is(gate.record(1.5, 6000), 15);
});
