import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { projectRoot } from '../helpers/server-process.js';
import {
  nextRegionState, regionEvents, RegionState, RegionStateError, regionStateNames, regionTransitions,
} from '../../regionlog/region-states.js';

const S = RegionState;

/**
 * The transition table as docs/region-log.md states it ("Region states"),
 * parsed from the document itself: the code is checked against the spec
 * people read, not against a copy kept in this test.
 */
function documentedTransitions(): Map<string, RegionState> {
  const text = fs.readFileSync(path.join(projectRoot, 'docs', 'region-log.md'), 'utf8');
  const section = text.slice(text.indexOf('## Region states'));
  const byName = new Map(Object.entries(regionStateNames).map(([state, name]) => [name, Number(state) as RegionState]));
  const table = new Map<string, RegionState>();
  for (const line of section.split('\n')) {
    const cells = /^\| ([A-Z_]+) \| ([a-z_]+) \| ([A-Z_]+) \|/.exec(line);
    if (!cells) {
      if (table.size > 0 && !line.startsWith('|')) break;
      continue;
    }
    const to = byName.get(cells[3]);
    if (to === undefined || !byName.has(cells[1])) throw new Error(`docs/region-log.md names an unknown state: ${line}`);
    table.set(`${cells[1]} ${cells[2]}`, to);
  }
  return table;
}

const expected = documentedTransitions();

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

test('the transition table in the code and the one in docs/region-log.md are the same set', (t) => {
  t.true(expected.size > 0, 'the documented table was found');
  const inCode = new Map(regionTransitions.map(([from, event, to]) => [`${regionStateNames[from]} ${event}`, to]));
  t.deepEqual([...inCode.entries()].sort(), [...expected.entries()].sort());
  const pairs = Object.values(S).length * regionEvents.length;
  t.regex(fs.readFileSync(path.join(projectRoot, 'docs', 'region-log.md'), 'utf8'), new RegExp(`checks all ${pairs} pairs`),
    'the document states how many pairs the exhaustive test covers');
});

test('CLEAN is reachable only from CLEAN_CANDIDATE after a successful sync', (t) => {
  const intoClean = regionTransitions.filter(([, , to]) => to === S.CLEAN);
  t.deepEqual(intoClean, [[S.CLEAN_CANDIDATE, 'sync_succeeded', S.CLEAN]]);
});
