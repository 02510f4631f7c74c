import test from 'ava';
import { runExhaustive, sequencesUpTo } from '../../tools/crash-test/exhaustive.js';

test('every sequence of up to three operations over two regions, power cut after each step, with and without sweeps: all invariants hold', async (t) => {
  t.is(sequencesUpTo(3).length, 9 + 81 + 729);
  const lines: string[] = [];
  const outcome = await runExhaustive({ seed: 20261121, say: (line) => lines.push(line) });
  t.log(lines[lines.length - 1]);
  t.is(outcome.runs, 2 * (9 + 81 * 2 + 729 * 3));
  t.deepEqual(outcome.failures.slice(0, 10), []);
});
