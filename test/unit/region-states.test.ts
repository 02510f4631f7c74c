import test from 'ava';
import {
  nextRegionState, regionEvents, RegionState, RegionStateError, regionStateNames, regionTransitions,
} from '../../regionlog/region-states.js';

const S = RegionState;
const expected = new Map<string, RegionState>([
  ['CLEAN write_start', S.DIRTY],
  ['DIRTY write_start', S.DIRTY],
  ['MAYBE_DIRTY write_start', S.DIRTY],
  ['CLEAN_CANDIDATE write_start', S.DIRTY],
  ['DIRTY writes_drained', S.MAYBE_DIRTY],
  ['CLEAN bit_loaded', S.MAYBE_DIRTY],
  ['MAYBE_DIRTY bit_loaded', S.MAYBE_DIRTY],
  ['MAYBE_DIRTY sweep_begin', S.CLEAN_CANDIDATE],
  ['CLEAN_CANDIDATE sync_succeeded', S.CLEAN],
  ['CLEAN_CANDIDATE sync_failed', S.MAYBE_DIRTY],
]);

// Every (state, event) pair: the allowed ones go where the spec says, every other one throws.
for (const from of Object.values(S)) {
  for (const event of regionEvents) {
    const key = `${regionStateNames[from]} ${event}`;
    test(`region state ${key}`, (t) => {
      const to = expected.get(key);
      if (to === undefined) {
        t.throws(() => nextRegionState(from, event), { instanceOf: RegionStateError });
      } else {
        t.is(nextRegionState(from, event), to);
      }
    });
  }
}

test('the transition table and the documented expectations are the same set', (t) => {
  t.is(regionTransitions.length, expected.size);
});

test('CLEAN is reachable only from CLEAN_CANDIDATE after a successful sync', (t) => {
  const intoClean = regionTransitions.filter(([, , to]) => to === S.CLEAN);
  t.deepEqual(intoClean, [[S.CLEAN_CANDIDATE, 'sync_succeeded', S.CLEAN]]);
});
