import test from 'ava';
import { type ExhaustiveDisk, runExhaustive, sequencesUpTo } from '../../tools/crash-test/exhaustive.js';

// The power-cut registry is process-wide, so these run one at a time.
test.serial('every sequence of up to three operations over two regions, power cut after each step, with and without sweeps: all invariants hold', async (t) => {
  t.is(sequencesUpTo(3).length, 9 + 81 + 729);
  const lines: string[] = [];
  const outcome = await runExhaustive({ seed: 20261121, say: (line) => lines.push(line) });
  t.log(lines[lines.length - 1]);
  t.is(outcome.runs, 2 * (9 + 81 * 2 + 729 * 3));
  t.deepEqual(outcome.failures.slice(0, 10), []);
});

// The oracle's own test: the same runs over disks that acknowledge flushes and FUA without keeping them must fail.
test.serial('the exhaustive oracle reports lost promises when legs or the log lie about durability', async (t) => {
  const failuresWith = async (lyingDisks: ExhaustiveDisk[]): Promise<string[]> =>
    (await runExhaustive({ seed: 20261121, say: () => undefined, maxLength: 2, lyingDisks })).failures;
  const honest = await failuresWith([]);
  t.deepEqual(honest, [], 'the same bounded runs pass over honest disks');
  const bothLegs = await failuresWith([0, 1]);
  t.true(bothLegs.some((line) => line.includes('invariant 2/3')), `flushed data lost on both legs is caught: ${bothLegs.length} failing`);
  const oneLeg = await failuresWith([1]);
  t.true(oneLeg.some((line) => /invariant (1|4)/.test(line)), `a leg that lost flushed data disagrees with the other: ${oneLeg.length} failing`);
  const log = await failuresWith(['log']);
  t.true(log.some((line) => line.includes('is newer than the region log')),
    `a log that lost its updates is refused against the legs: ${log.length} failing`);
  t.log(`failing runs of ${2 * (9 + 81 * 2)}: lying legs ${bothLegs.length}, one lying leg ${oneLeg.length}, lying log ${log.length}`);
});
