import test from 'ava';
import { formatRatio, pairedRatio } from '../../bench/paired-ratio.js';

test('a paired ratio divides each round by its own round, not best by best', (t) => {
  // The machine ran slower in the second round: both sides fell there.
  const ratio = pairedRatio([36, 14, 32], [40, 20, 40])!;
  t.is(ratio.rounds, 3);
  t.is(ratio.median, 0.8, 'the middle of the sorted ratios (0.9, 0.7, 0.8), not of the rounds in order');
  t.is(ratio.min, 0.7);
  t.is(ratio.max, 0.9);
  // Best over best would say 36/40 = 0.9x: the luckiest round only.
  t.is(formatRatio(ratio), '0.80x (0.70-0.90)');
});

test('an even number of rounds takes the middle two, one round prints alone, none gives nothing', (t) => {
  t.is(pairedRatio([10, 30], [10, 20])!.median, 1.25);
  t.is(formatRatio(pairedRatio([9], [10])!), '0.90x');
  t.is(pairedRatio([], []), undefined);
  t.is(pairedRatio([5], [0]), undefined, 'a round the denominator did not run is left out');
});
