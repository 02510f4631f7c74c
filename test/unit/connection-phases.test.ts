import test from 'ava';
import { checkedPhase, type Phase, phaseTable } from '../../nbd/handshake.js';

const phases = Object.keys(phaseTable) as Phase[];

for (const from of phases) {
  for (const to of phases) {
    const allowed = phaseTable[from].next.includes(to);
    test(`connection phase ${from} -> ${to} is ${allowed ? 'allowed' : 'refused'}`, (t) => {
      if (allowed) t.is(checkedPhase(from, to), to);
      else t.throws(() => checkedPhase(from, to), { name: 'AssertionError' });
    });
  }
}

test('the handshake only moves forward (but for options again after TLS), and every phase can end in closed', (t) => {
  const order: Phase[] = ['client-flags', 'options', 'tls-handshake', 'transmission', 'closing', 'closed'];
  t.deepEqual(phases, order);
  // After STARTTLS, negotiation starts over inside TLS: the one edge back, and only from the TLS handshake.
  const backEdges = [['tls-handshake', 'options']];
  for (const [position, from] of order.entries()) {
    for (const to of phaseTable[from].next) {
      if (backEdges.some(([a, b]) => a === from && b === to)) continue;
      t.true(order.indexOf(to) > position, `${from} -> ${to} goes back`);
    }
    if (from !== 'closed') t.true(phaseTable[from].next.includes('closed'), `${from} cannot be dropped`);
  }
  t.true(phaseTable['tls-handshake'].next.includes('closing'), 'a client may half-close during the TLS handshake');
});
