import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { cliPath, projectRoot, startServerProcess } from '../helpers/server-process.js';
import { makePki } from '../helpers/tls-files.js';
import { makeTempDir, run } from '../helpers/tools.js';

/**
 * The Linux kernel's own NBD client (nbd.ko driven by nbd-client 3.24) in a
 * small VM: mkfs, files, fsck, TRIM, zeroing, and a second session with one
 * or two connections. The harness is the project's copy of shared/tools/kernel-nbd
 * (see test/kernel-nbd/README.md); it installs qemu-system-x86 when missing.
 */
const harness = path.join(projectRoot, 'test', 'kernel-nbd', 'run.sh');

/**
 * nbd-client 3.24 does TLS (x509 only) in userspace: it negotiates STARTTLS,
 * then hands nbd.ko one end of a socketpair and relays it through a TLS
 * proxy. Its credentials reach the guest as files appended to its initramfs.
 */
const cases = [{ conns: 2, mirror: false, tls: true }, { conns: 2, mirror: false, tls: false }, { conns: 2, mirror: true, tls: false }];

for (const { conns, mirror, tls } of cases) {
  const over = tls ? ' over TLS (x509, client certificate verified)' : '';
  test.serial(`the Linux kernel client attaches${mirror ? ' to a two-leg mirror' : ''}${over}, runs mkfs/fsck/TRIM and a ${conns}-connection session`, async (t) => {
    t.timeout(15 * 60_000);
    const dir = makeTempDir(`kernel-${conns}`);
    const storage = mirror
      ? ['--leg', path.join(dir, 'leg0.img'), path.join(dir, 'leg1.img'), '--log', path.join(dir, 'mirror.log'),
        '--admin', path.join(dir, 'admin.sock'), '--sweep-interval-ms', '500']
      : ['--leg', path.join(dir, 'leg.img')];
    const pki = tls ? await makePki(dir) : undefined;
    const tlsServer = pki === undefined ? [] : ['--tls', 'require', '--tls-certificates', pki.serverDir, '--tls-verify-peer'];
    // Shorter handshake timeout than the default, but well above the ~25 s the VM's idle ports wait.
    const server = await startServerProcess([...storage, '--size', '512MiB', '--no-unix',
      '--export-name', 'disk', '--handshake-timeout-ms', '120000', ...tlsServer]);
    try {
      const args = [String(server.port), 'disk', '--conns', String(conns), '--require-trim', '--log-dir', path.join(dir, 'logs')];
      if (pki !== undefined) {
        for (const file of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) {
          args.push('--guest-file', `${path.join(pki.clientDir, file)}:/etc/nbd-tls/${file}`);
        }
        args.push('--nbd-client-opts', '-cacertfile /etc/nbd-tls/ca-cert.pem -certfile /etc/nbd-tls/client-cert.pem ' +
          '-keyfile /etc/nbd-tls/client-key.pem -tlshostname localhost');
      }
      if (conns > 1) args.push('--require-multi-conn');
      const result = await run(harness, args, { timeoutMs: 14 * 60_000 });
      t.log(result.stdout.split('\n').filter((line) => /RESULT|FAIL|NOTRUN|passed,/.test(line)).join('\n'));
      t.is(result.code, 0, `${result.stdout}\n${result.stderr}`);
      t.regex(result.stdout, /kernel-nbd: \d+ passed, 0 failed/);
      const warnings = server.logs.filter((entry) => entry.msg === 'request failed');
      t.deepEqual(warnings, [], 'no request failed while the kernel used the device');
      // Under require, only a client inside TLS can reach GO: every attach was a TLS session.
      if (tls) t.true(server.logs.filter((entry) => entry.msg === 'client attached').length >= 1 + conns);
    } finally {
      t.is(await server.stop(), 0);
      if (mirror) {
        const check = await run(process.execPath, [cliPath, 'check', '--leg', path.join(dir, 'leg0.img'), path.join(dir, 'leg1.img'),
          '--log', path.join(dir, 'mirror.log')]);
        t.regex(check.stdout, /mismatch_cnt 0/, `${check.stdout}${check.stderr}`);
      }
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}
