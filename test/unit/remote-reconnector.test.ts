import test from 'ava';
import { pino } from 'pino';
import type { MirrorEvent } from '../../blockdev/events.js';
import { MirrorSetupError } from '../../mirror/create.js';
import { LegUnreachableError, RemoteReconnector } from '../../mirror/remote-legs.js';
import { waitUntil } from '../helpers/wait.js';

const logger = pino({ level: 'silent' });
const policy = { firstDelayMs: 5, maxDelayMs: 20 };

/** A slot that answers each re-add attempt with the next outcome; 'ok' puts it back in sync. */
function target(outcomes: Array<'ok' | Error>) {
  let state = 'faulty';
  let attempts = 0;
  return {
    get attempts() { return attempts; },
    /** The operator's hold, as the leg's log record carries it. */
    held: false,
    legState: () => state,
    legHeld(): boolean {
      return this.held;
    },
    reAdd: async () => {
      const outcome = outcomes[Math.min(attempts, outcomes.length - 1)];
      attempts += 1;
      if (outcome !== 'ok') throw outcome;
      state = 'rebuilding';
      return 'leg 1 re-added; 2 regions to resync';
    },
  };
}

test('a remote leg is retried while unreachable or while its open fails, then re-added, with the attempts in status', async (t) => {
  const events: MirrorEvent[] = [];
  const slot = target([new LegUnreachableError('cannot be reached'), new Error('ECONNRESET between label and open'), 'ok']);
  const reconnector = new RemoteReconnector(slot, logger, (event) => events.push(event), policy);
  reconnector.watch(1, 'nbd://replica/disk');
  t.true(await waitUntil(() => slot.attempts === 3, 2000, 5));
  t.true(await waitUntil(() => events.length === 1, 2000, 5));
  t.like(events[0], { event: 'leg-reconnected', slot: 1, attempt: 3 });
  t.is(reconnector.linkStatus(1, false).link, 'connected');
  reconnector.stop();
});

test('a leg whose label is refused is not retried, and status says refused with the reason', async (t) => {
  const events: MirrorEvent[] = [];
  const slot = target([new MirrorSetupError('leg 1 has no valid nbd-mirror label')]);
  const reconnector = new RemoteReconnector(slot, logger, (event) => events.push(event), policy);
  reconnector.watch(1, 'nbd://replica/disk');
  t.true(await waitUntil(() => events.length === 1, 2000, 5));
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.is(slot.attempts, 1, 'no second attempt');
  t.like(events[0], { event: 'leg-refused', slot: 1 });
  t.like(reconnector.linkStatus(1, true), { link: 'refused', attempts: 1, problem: 'leg 1 has no valid nbd-mirror label' });
  reconnector.released(1);
  t.like(reconnector.linkStatus(1, true), { link: 'away', attempts: 0, problem: 'not being reconnected' },
    'the operator acted: the refusal is history, and no reconnect is claimed that nobody runs');
  reconnector.stop();
});

test('a hold put while attempts are running stops them', async (t) => {
  const slot = target([new LegUnreachableError('cannot be reached')]);
  const reconnector = new RemoteReconnector(slot, logger, () => undefined, policy);
  reconnector.watch(1, 'nbd://replica/disk');
  t.true(await waitUntil(() => slot.attempts >= 2, 2000, 5));
  t.is(reconnector.linkStatus(1, true).link, 'reconnecting');
  slot.held = true;
  reconnector.heldByOperator(1);
  const attemptsWhenHeld = slot.attempts;
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.is(slot.attempts, attemptsWhenHeld);
  t.is(reconnector.linkStatus(1, true).link, 'held');
  reconnector.stop();
});

test('a leg the operator failed is left alone until they act', async (t) => {
  const slot = target(['ok']);
  const reconnector = new RemoteReconnector(slot, logger, () => undefined, policy);
  slot.held = true;
  reconnector.heldByOperator(1);
  reconnector.watch(1, 'nbd://replica/disk');
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.is(slot.attempts, 0);
  t.is(reconnector.linkStatus(1, true).link, 'held');
  slot.held = false;
  reconnector.released(1);
  reconnector.watch(1, 'nbd://replica/disk');
  t.true(await waitUntil(() => slot.attempts === 1, 2000, 5));
  reconnector.stop();
});
