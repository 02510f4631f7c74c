import test from 'ava';
import { type Admitted, AdmissionPolicy, AllowList, AllowListError } from '../../nbd/admission.js';

interface Fake extends Admitted {
  id: number;
}

const client = (id: number, address: string | undefined, negotiating: boolean): Fake => ({ id, address, negotiating });

const policy = (overrides: Partial<ConstructorParameters<typeof AdmissionPolicy>[0]> = {}): AdmissionPolicy<Fake> =>
  new AdmissionPolicy<Fake>({ maxConnections: 8, negotiatingMax: 3, perAddressMax: 4, allow: undefined, ...overrides });

test('under every limit a newcomer is admitted and nobody is dropped', (t) => {
  const verdict = policy().decide('10.0.0.1', [client(1, '10.0.0.2', true), client(2, '10.0.0.3', false)]);
  t.deepEqual(verdict, { admit: true, drop: undefined });
});

test('a full negotiating budget drops its oldest member, never an attached client', (t) => {
  const current = [client(1, '10.0.0.9', false), client(2, '10.0.0.2', true), client(3, '10.0.0.3', true), client(4, '10.0.0.4', true)];
  const verdict = policy().decide('10.0.0.5', current);
  t.true(verdict.admit);
  t.is(verdict.admit ? verdict.drop?.id : undefined, 2, 'the oldest still negotiating');
});

test('a full house drops the oldest negotiating one, or refuses when all are attached', (t) => {
  const mixed = [client(1, 'a', false), client(2, 'b', false), client(3, 'c', true), client(4, 'd', false)];
  const verdict = policy({ maxConnections: 4, negotiatingMax: 4 }).decide('e', mixed);
  t.is(verdict.admit ? verdict.drop?.id : undefined, 3);
  const attached = [client(1, 'a', false), client(2, 'b', false), client(3, 'c', false), client(4, 'd', false)];
  t.like(policy({ maxConnections: 4 }).decide('e', attached), { admit: false, reason: 'too-many-connections' });
});

test('at the per-address cap, that address\'s oldest negotiating connection is dropped, not another address\'s', (t) => {
  const current = [client(1, '10.0.0.8', true), client(2, '10.0.0.7', false), client(3, '10.0.0.7', true), client(4, '10.0.0.7', true),
    client(5, '10.0.0.7', false)];
  const verdict = policy({ negotiatingMax: 8 }).decide('10.0.0.7', current);
  t.deepEqual(verdict, { admit: true, drop: current[2], dropReason: 'per-address' });
});

test('the per-address cap refuses that address only, and never applies to unix-socket clients', (t) => {
  const current = [1, 2, 3, 4].map((id) => client(id, '10.0.0.7', false));
  t.like(policy({ negotiatingMax: 8 }).decide('10.0.0.7', current), { admit: false, reason: 'per-address-limit' });
  t.like(policy({ negotiatingMax: 8 }).decide('10.0.0.8', current), { admit: true });
  const unix = [1, 2, 3, 4, 5].map((id) => client(id, undefined, false));
  t.like(policy({ negotiatingMax: 8 }).decide(undefined, unix), { admit: true });
});

test('the allow list: addresses, IPv4 and IPv6 networks, IPv4-mapped IPv6 clients; unix clients pass', (t) => {
  const list = new AllowList(['127.0.0.1', '10.0.0.0/8', 'fd00::/8', '::1']);
  for (const address of ['127.0.0.1', '10.200.3.4', '::ffff:10.1.1.1', 'fd12::5', '::1']) t.true(list.allows(address), address);
  for (const address of ['127.0.0.2', '11.0.0.1', '::ffff:11.0.0.1', 'fe80::1', '::2']) t.false(list.allows(address), address);
  const guarded = policy({ allow: list });
  t.like(guarded.decide('192.168.1.1', []), { admit: false, reason: 'not-allowed' });
  t.like(guarded.decide(undefined, []), { admit: true }, 'a unix-socket client has no address to check');
});

test('bad allow-list entries are refused with their index', (t) => {
  for (const [entries, index, problem] of [
    [['10.0.0.0/8', 'example.com'], 1, /not an address or network/],
    [['10.0.0.0/33'], 0, /prefix length outside 0\.\.32/],
    [['::/129'], 0, /outside 0\.\.128/],
    [['10.0.0.0/8/8'], 0, /not an address or network/],
    [['10.0.0.0/x'], 0, /prefix length/],
  ] as const) {
    const error = t.throws(() => new AllowList([...entries]), { instanceOf: AllowListError });
    t.is(error?.index, index);
    t.regex(error?.problem ?? '', problem);
  }
});
