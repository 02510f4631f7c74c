import test from 'ava';
import { parseNbdUri } from '../../backends/nbd-client/nbd-uri.js';

test('NBD URIs as libnbd reads them', (t) => {
  t.like(parseNbdUri('nbd://example.com/disk'), { tls: false, exportName: 'disk', transport: { kind: 'tcp', host: 'example.com', port: 10809 } });
  t.like(parseNbdUri('nbd://10.0.0.2:10810/'), { exportName: '', transport: { kind: 'tcp', host: '10.0.0.2', port: 10810 } });
  t.like(parseNbdUri('nbd://[::1]:7000/a%20b'), { exportName: 'a b', transport: { kind: 'tcp', host: '::1', port: 7000 } });
  t.like(parseNbdUri('nbd+unix:///disk?socket=/run/nbd.sock'), { exportName: 'disk', transport: { kind: 'unix', socket: '/run/nbd.sock' } });
  t.like(parseNbdUri('nbds://alice@h/disk?tls-psk-file=/k.psk'), { tls: true, tlsUsername: 'alice', tlsPskFile: '/k.psk', tlsVerifyPeer: true });
  t.like(parseNbdUri('nbds+unix:///?socket=s&tls-certificates=/c&tls-verify-peer=false'),
    { tls: true, tlsCertificates: '/c', tlsVerifyPeer: false, transport: { kind: 'unix', socket: 's' } });
});

test('URIs that would connect somewhere unintended are refused with the reason', (t) => {
  const refused: Array<[string, RegExp]> = [
    ['http://h/disk', /unknown scheme http:/],
    ['nbd:///disk', /names no host/],
    ['nbd+unix:///disk', /needs \?socket=PATH/],
    ['nbd+unix://host/disk?socket=/s', /takes no host/],
    ['nbd://h/disk?socket=/s', /socket= is for nbd\+unix/],
    ['nbd://h/disk?tls-certificates=/c', /plaintext \(use nbds\)/],
    ['nbds://h/disk', /names no credentials/],
    ['nbds://h/disk?tls-certificates=/c&tls-psk-file=/k', /choose one kind of credentials/],
    ['nbds://h/disk?tls-certificates=/c&tls-verify-peer=maybe', /must be true or false/],
    ['nbd://h/disk?tls=1', /unknown query key tls/],
    ['nbds://u:secret@h/disk?tls-psk-file=/k', /carries a password/],
  ];
  for (const [uri, expected] of refused) t.throws(() => parseNbdUri(uri), { name: 'NbdUriError', message: expected }, uri);
});
