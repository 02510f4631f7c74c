import test from 'ava';
import { InputPoll, nextPollWindowUs } from '../../nbd/input-poll.js';
import { ManualClock } from '../../sys/clock.js';

test('nextPollWindowUs follows QEMU: keep within the window, stop above the maximum, else double from 4 us up to it', (t) => {
  t.is(nextPollWindowUs(0, 30, 100), 4, 'a short wait starts polling at 4 us');
  t.is(nextPollWindowUs(4, 30, 100), 8);
  t.is(nextPollWindowUs(64, 80, 100), 100, 'capped at the maximum');
  t.is(nextPollWindowUs(100, 99, 100), 100, 'within the window: unchanged');
  t.is(nextPollWindowUs(32, 20, 100), 32, 'within the window: unchanged');
  t.is(nextPollWindowUs(64, 101, 100), 0, 'longer than the maximum: stop');
  t.is(nextPollWindowUs(0, 5000, 100), 0);
  // Growing from nothing reaches the maximum in a bounded number of short waits.
  let window = 0;
  for (let wait = 0; wait < 6; wait += 1) window = nextPollWindowUs(window, window + 1, 100);
  t.is(window, 100);
});

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** A poll whose window opened on 20 inputs 10 us apart; time moves only when the test says, so each step is exact however busy the machine is. */
async function openedPoll(): Promise<{ clock: ManualClock; poll: InputPoll }> {
  const clock = new ManualClock(1000);
  const poll = new InputPoll(200, clock);
  for (let input = 0; input < 20; input += 1) {
    poll.inputArrived();
    await turn();
    clock.advance(0.01);
  }
  return { clock, poll };
}

test('InputPoll: input in quick succession opens a window, a late reply polls too, and every poll chain ends by itself', async (t) => {
  const { clock, poll } = await openedPoll();
  t.true(poll.currentWindowUs > 0, 'inputs 10 us apart opened a window');
  t.true(poll.isPolling, 'the last input is inside its window: still polling');
  clock.advance(1);
  await turn();
  t.false(poll.isPolling, 'no input for 1 ms: polling stopped at the end of the window');
  poll.replySent(false);
  t.true(poll.isPolling, 'a reply that went out late: poll for the next request');
  clock.advance(1);
  await turn();
  t.false(poll.isPolling);
  clock.advance(20);
  poll.inputArrived();
  t.is(poll.currentWindowUs, 0, 'a wait of 20 ms is far above the maximum: no window');
  await turn();
  t.false(poll.isPolling);
  const off = new InputPoll(0, clock);
  off.inputArrived();
  t.false(off.isPolling, 'a maximum of 0 never polls');
});

test('InputPoll: no polling while a flush waits on the device; its reply polls again, and the window is kept; other late requests keep it', async (t) => {
  const { clock, poll } = await openedPoll();
  const window = poll.currentWindowUs;
  t.true(window > 0);
  // A write that went to the thread pool keeps the window: its client may well send more meanwhile.
  poll.inputArrived();
  await turn();
  t.true(poll.isPolling, 'a late write does not stop the window');
  clock.advance(0.01);
  // A flush arrives and goes to the thread pool: the client waits for its reply.
  poll.inputArrived();
  poll.flushWaiting();
  t.true(poll.isPolling, 'the chain is pending until the end of the turn');
  await turn();
  t.false(poll.isPolling, 'a flush waits on the device: the loop sleeps instead of spinning out the window');
  clock.advance(0.3);
  poll.replySent(true);
  t.true(poll.isPolling, 'its reply went out: poll for the next request');
  clock.advance(0.01);
  poll.inputArrived();
  t.is(poll.currentWindowUs, window, 'the next request came within the window, which the wait on the device did not shrink');
  await turn();
  clock.advance(1);
  await turn();
  t.false(poll.isPolling);
  t.throws(() => poll.replySent(true), { message: /no waiting flush/ }, 'every flush reply pairs with a flush that waited');
});
