import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import {
  applyLegEvent, type LegEvent, legEvents, type LegLifecycleState, LegStateError, legStates, legTransitions, lifecycleStateOf, nextLegState,
} from '../../mirror/leg-states.js';
import type { LegRecord } from '../../regionlog/format.js';
import { projectRoot } from '../helpers/server-process.js';

/** The table as docs/mirror.md states it ("Leg lifecycle"), parsed from the document. */
function documented(): Map<string, LegLifecycleState> {
  const text = fs.readFileSync(path.join(projectRoot, 'docs', 'mirror.md'), 'utf8');
  const section = text.slice(text.indexOf('## Leg lifecycle'));
  const table = new Map<string, LegLifecycleState>();
  for (const line of section.split('\n')) {
    const cells = /^\| ([a-z_]+) \| ([a-z_]+) \| ([a-z_]+) \|/.exec(line);
    if (!cells || cells[1] === 'from') {
      if (table.size > 0 && !line.startsWith('|')) break;
      continue;
    }
    if (!legStates.includes(cells[1] as LegLifecycleState) || !legStates.includes(cells[3] as LegLifecycleState) ||
      !legEvents.includes(cells[2] as LegEvent)) throw new Error(`docs/mirror.md names an unknown state or event: ${line}`);
    table.set(`${cells[1]} ${cells[2]}`, cells[3] as LegLifecycleState);
  }
  return table;
}

const expected = documented();

function recordIn(state: LegLifecycleState): LegRecord {
  const [logState, rebuildMode] = state === 'rebuilding_bitmap' ? ['rebuilding', 'bitmap'] as const
    : state === 'rebuilding_full' ? ['rebuilding', 'full'] as const : [state, 'none'] as const;
  return { uuid: Buffer.alloc(16, 1), state: logState, rebuildMode, events: 5n, rebuildCheckpointBytes: 4096, failedAtMs: state === 'faulty' ? 7 : 0, heldByOperator: false };
}

for (const from of legStates) {
  for (const event of legEvents) {
    const key = `${from} ${event}`;
    test(`leg state ${key}`, (t) => {
      const to = expected.get(key);
      const record = recordIn(from);
      if (to === undefined) {
        const before = { ...record, uuid: Buffer.from(record.uuid) };
        t.throws(() => applyLegEvent(record, event, { nowMs: 1000, events: 9n }), { instanceOf: LegStateError });
        t.deepEqual(record, before, 'a refused event changes nothing');
        return;
      }
      t.is(nextLegState(from, event), to);
      t.is(applyLegEvent(record, event, { nowMs: 1000, events: 9n }), to);
      t.is(lifecycleStateOf(record), to, 'the record\'s two fields say the new state');
      if (to === 'faulty') {
        t.is(record.failedAtMs, event === 'held' ? 7 : 1000, event === 'held' ? 'a hold keeps when the leg failed' : 'a failure is stamped with its time');
      }
      t.is(record.heldByOperator, event === 'operator_failed' || event === 'held', 'only the operator\'s fail holds a leg');
      if (to === 'in_sync') {
        t.is(record.failedAtMs, 0, 'a leg back in sync carries no failure time');
        t.is(record.events, 9n);
      }
      if (to.startsWith('rebuilding')) t.is(record.rebuildCheckpointBytes, 0, 'a rebuild starts from the beginning');
      if (to === 'empty') t.true(record.uuid.equals(Buffer.alloc(16)), 'an empty slot has no leg UUID');
    });
  }
}

test('the table in the code and the one in docs/mirror.md are the same set, and the document counts the pairs', (t) => {
  t.true(expected.size > 0);
  t.deepEqual(legTransitions.map(([from, event, to]) => [`${from} ${event}`, to]).sort(), [...expected.entries()].sort());
  t.regex(fs.readFileSync(path.join(projectRoot, 'docs', 'mirror.md'), 'utf8'), new RegExp(`checks all ${legStates.length * legEvents.length} pairs`));
});

test('a record whose state and rebuild mode disagree is refused', (t) => {
  t.throws(() => lifecycleStateOf({ state: 'in_sync', rebuildMode: 'bitmap' }), { instanceOf: LegStateError });
  t.throws(() => lifecycleStateOf({ state: 'rebuilding', rebuildMode: 'none' }), { instanceOf: LegStateError });
  t.throws(() => applyLegEvent(recordIn('rebuilding_full'), 'caught_up'), { instanceOf: LegStateError }, 'catching up needs the events value');
});

test('only faulty legs come back without a full rebuild, and only a rebuild ends in sync', (t) => {
  t.deepEqual(legTransitions.filter(([, , to]) => to === 'rebuilding_bitmap').map(([from]) => from), ['faulty']);
  t.deepEqual(legTransitions.filter(([, , to]) => to === 'in_sync').map(([from]) => from).sort(), ['rebuilding_bitmap', 'rebuilding_full']);
});
