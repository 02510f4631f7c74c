import test from 'ava';
import { attachHints } from '../../cli/serve.js';
import { parseConfig } from '../../config/schema.js';

test('attach hints put an IPv6 address in brackets in URIs, and leave it bare for nbd-client', (t) => {
  const config = parseConfig({ listen: { tcp: '[::1]:10811' }, export: { name: 'disk' }, storage: { legs: [{ path: 'a.img' }] } }, '/tmp');
  t.deepEqual(config.listen.tcp, { host: '::1', port: 10811 });
  const hints = attachHints(config, { tcp: { host: '::1', port: 10811 }, unixPath: undefined });
  t.deepEqual(hints, ['nbdinfo nbd://[::1]:10811/disk', 'qemu-img info nbd://[::1]:10811/disk', "nbd-client ::1 10811 /dev/nbd0 -N 'disk'"]);
  t.is(attachHints(config, { tcp: { host: '127.0.0.1', port: 1 }, unixPath: undefined })[0], 'nbdinfo nbd://127.0.0.1:1/disk');
});
