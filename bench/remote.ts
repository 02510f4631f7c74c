/**
 * The remote-leg table of npm run bench (BENCH_ONLY=remote): a mirror with
 * one local leg and one remote leg (served over loopback by our own plain
 * export, and by nbdkit file), beside the same mirror with two local legs,
 * all without the page cache (it would hide what the leg path costs), the
 * remote leg write-mostly as an operator would configure a replica. Then the
 * link slowed by the fault proxy (the kernel here has no netem), and the
 * resync after a 10 s cut under random writes.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { adminRequest } from '../tools/admin-client.js';
import { type FaultProxy, startFaultProxy } from '../tools/crash-test/fault-proxy.js';
import { type ServerProcess, startServerProcess } from '../test/helpers/server-process.js';
import { freePort, run } from '../test/helpers/tools.js';
import type { FioJob } from './fio.js';
import { fill } from './mirror.js';
import { type BenchServer, blankFile, measureJob, printJob, printPeakMemory, startPeer } from './side-by-side.js';

export const remoteJobs: FioJob[] = [
  { name: '4k-randwrite-qd1', rw: 'randwrite', blockSize: '4k', iodepth: 1 },
  { name: '4k-randwrite-qd32', rw: 'randwrite', blockSize: '4k', iodepth: 32 },
  { name: '1m-seqwrite-qd8', rw: 'write', blockSize: '1m', iodepth: 8 },
  { name: '4k-randread-qd32', rw: 'randread', blockSize: '4k', iodepth: 32 },
];

type Name = 'local+local' | 'local+ours' | 'local+nbdkit' | 'local+nbdkit-4conn' | 'local+ours-2ms';
const labelBytes = 8192;

/** A mirror server process over leg0 (local) and `leg1` (a path or a URI), no cache, admin socket beside. */
async function startMirror(dir: string, name: string, sizeBytes: number, leg1: string, remoteFile?: string, connections = 1):
  Promise<{ process: ServerProcess; admin: string; files: string[] }> {
  const config = path.join(dir, `${name}.yaml`);
  const admin = path.join(dir, `${name}.sock`);
  const remote = leg1.startsWith('nbd');
  fs.writeFileSync(config, `listen:\n  admin: ${admin}\nstorage:\n  sizeBytes: ${sizeBytes}\n  log: ${path.join(dir, `${name}.log`)}\n` +
    `  legs:\n    - path: ${path.join(dir, `${name}-0.img`)}\n    - path: "${leg1}"\n` +
    (remote ? `      writeMostly: true\n      failfastMs: 2000\n      connections: ${connections}\n` : '') + 'cache:\n  enabled: false\n');
  const process = await startServerProcess(['-c', config, '--no-unix']);
  // A mirror over an existing export starts with a full sync: wait for it, so the figures are the steady state.
  await adminRequest(admin, { command: 'wait-resync' }, undefined, 600_000);
  // The remote's backing file too: its page-cache state decides as much as a local leg's (see file-cache.ts;
  // left full of large folios by the fill, 4k writes into it ran about 3x slower, which first showed as 0.32x).
  return { process, admin, files: [path.join(dir, `${name}-0.img`), remote ? remoteFile! : leg1] };
}

/** Mean round trip of a 28-byte message over loopback TCP to another process (what one NBD request's hop costs at least). */
async function loopbackRoundTripUs(): Promise<number> {
  const port = await freePort();
  const echo = spawn(process.execPath, ['-e', `require('net').createServer((s) => { s.setNoDelay(true); s.pipe(s); }).listen(${port}, '127.0.0.1')`],
    { stdio: 'ignore' });
  try {
    await new Promise((resolve) => setTimeout(resolve, 300));
    const socket = net.connect({ host: '127.0.0.1', port, noDelay: true });
    await new Promise((resolve) => socket.once('connect', resolve));
    const message = Buffer.alloc(28);
    const trips = 3000;
    const started = process.hrtime.bigint();
    for (let trip = 0; trip < trips; trip += 1) {
      await new Promise<void>((resolve) => {
        let got = 0;
        const onData = (chunk: Buffer): void => {
          got += chunk.length;
          if (got >= message.length) { socket.off('data', onData); resolve(); }
        };
        socket.on('data', onData);
        socket.write(message);
      });
    }
    const us = Number(process.hrtime.bigint() - started) / 1000 / trips;
    socket.destroy();
    return us;
  } finally {
    echo.kill('SIGTERM');
  }
}

export async function benchRemote(options: { dir: string; sizeBytes: number; seconds: number; rounds: number; jobs?: string[] }): Promise<void> {
  const { dir, sizeBytes, seconds, rounds } = options;
  console.log('\nremote legs: mirror of a local leg and a remote one (write-mostly, failfast 2 s) over loopback, served by our plain ' +
    'export and by nbdkit file, vs two local legs; no cache anywhere');
  const remoteOurs = await startServerProcess(['--leg', blankFile(path.join(dir, 'remote-ours.img'), sizeBytes + labelBytes), '--no-unix', '--no-cache']);
  /** `nbdkit file` over a blank file of its own, as a remote leg's export. */
  const serveNbdkit = async (name: string): Promise<{ peer: BenchServer<'nbdkit'>; file: string }> => {
    const port = await freePort();
    const file = blankFile(path.join(dir, `${name}.img`), sizeBytes + labelBytes);
    return { peer: await startPeer('nbdkit', 'nbdkit', ['-f', '-i', '127.0.0.1', '-p', String(port), 'file', file], `nbd://127.0.0.1:${port}/`, [file]), file };
  };
  const { peer: remoteNbdkit, file: nbdkitFile } = await serveNbdkit('remote-nbdkit');
  const remoteSlow = await startServerProcess(['--leg', blankFile(path.join(dir, 'remote-slow.img'), sizeBytes + labelBytes), '--no-unix', '--no-cache']);
  const proxy = await startFaultProxy({ host: '127.0.0.1', port: remoteSlow.port });
  const stops: Array<() => Promise<unknown>> = [() => remoteOurs.stop(), () => remoteNbdkit.stop(), () => remoteSlow.stop(), () => proxy.close()];
  try {
    const mirrors: Array<BenchServer<Name>> = [];
    const add = async (name: Name, leg1: string, remoteFile?: string, connections?: number): Promise<void> => {
      const mirror = await startMirror(dir, name.replace(/\W/g, '-'), sizeBytes, leg1, remoteFile, connections);
      stops.push(() => mirror.process.stop());
      mirrors.push({ name, uri: mirror.process.uri(), pid: mirror.process.pid, files: mirror.files, stop: async () => { await mirror.process.stop(); } });
    };
    await add('local+local', path.join(dir, 'local-local-1.img'));
    await add('local+ours', `nbd://127.0.0.1:${remoteOurs.port}/`, path.join(dir, 'remote-ours.img'));
    await add('local+nbdkit', remoteNbdkit.uri, nbdkitFile);
    // Multi-conn: the same nbdkit export over four connections (nbdkit advertises multi-conn for files).
    const { peer: remoteNbdkit4, file: nbdkitFile4 } = await serveNbdkit('remote-nbdkit-4conn');
    stops.push(() => remoteNbdkit4.stop());
    await add('local+nbdkit-4conn', remoteNbdkit4.uri, nbdkitFile4, 4);
    for (const mirror of mirrors) await fill(mirror.uri, sizeBytes);
    const rtt = await loopbackRoundTripUs();
    console.log(`loopback TCP round trip between two processes: ${rtt.toFixed(0)} us (mean of 3000)`);
    for (const job of remoteJobs.filter((candidate) => options.jobs?.includes(candidate.name) ?? true)) {
      const results = await measureJob(mirrors, job, { seconds, rounds, sizeBytes });
      printJob(job, mirrors, results, [['local+ours', 'local+local'], ['local+nbdkit', 'local+local'], ['local+nbdkit-4conn', 'local+local'],
        ['local+nbdkit-4conn', 'local+nbdkit']]);
      if (job.iodepth === 1) {
        const local = results.best('local+local').result.latencyMeanUs;
        for (const name of ['local+ours', 'local+nbdkit', 'local+nbdkit-4conn'] as const) {
          const added = results.best(name).result.latencyMeanUs - local;
          console.log(`  ${name}: mean latency ${added.toFixed(0)} us above two local legs; budget one loopback round trip + 20 us = ` +
            `${(rtt + 20).toFixed(0)} us`);
        }
      }
    }
    printPeakMemory(mirrors);

    // The link slowed: 1 ms each way through the proxy, 2 ms more per round trip.
    proxy.setDelay(1);
    await add('local+ours-2ms', `nbd://127.0.0.1:${proxy.port}/`, path.join(dir, 'remote-slow.img'));
    const slow = mirrors.filter((mirror) => mirror.name === 'local+ours-2ms' || mirror.name === 'local+local');
    console.log('\nthe remote link 2 ms slower per round trip (fault proxy, 1 ms each way; this kernel has no netem)');
    for (const job of remoteJobs.slice(0, 3)) {
      printJob(job, slow, await measureJob(slow, job, { seconds, rounds: 1, sizeBytes }), [['local+ours-2ms', 'local+local']]);
    }
    await resyncAfterCut(dir, slow.find((mirror) => mirror.name === 'local+ours-2ms')!, proxy, sizeBytes);
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
  }
}

/**
 * 4k random writes at QD32 for 25 s; the link is cut from 5 s to 15 s; then
 * how long the leg took to come back (reconnect backoff) and to catch up
 * (copying the regions written while it was away).
 */
async function resyncAfterCut(dir: string, mirror: BenchServer<Name>, proxy: FaultProxy, sizeBytes: number): Promise<void> {
  const admin = path.join(dir, 'local-ours-2ms.sock');
  const fio = run('fio', ['--name=cut', '--ioengine=nbd', `--uri=${mirror.uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=32',
    `--size=${sizeBytes}`, '--time_based', '--runtime=25', '--norandommap', '--randrepeat=0'], { timeoutMs: 120_000 });
  await new Promise((resolve) => setTimeout(resolve, 5000));
  proxy.cut();
  await new Promise((resolve) => setTimeout(resolve, 10_000));
  proxy.heal();
  const healedAt = Date.now();
  let rebuildingAt: number | undefined;
  let regions = 0;
  let status: { health: string; legs: Array<{ state: string }>; regionCount: number; regions: { outOfSync: number } } | undefined;
  for (let poll = 0; poll < 1200; poll += 1) {
    status = await adminRequest(admin, { command: 'status' }) as typeof status;
    if (rebuildingAt === undefined && status!.legs[1].state === 'rebuilding') {
      rebuildingAt = Date.now();
      regions = status!.regions.outOfSync;
    }
    if (status!.health === 'optimal') break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const result = await fio;
  const inSyncAt = Date.now();
  const iops = /IOPS=([\d.k]+)/.exec(result.stdout)?.[1] ?? '?';
  console.log(`\nresync after a 10 s cut under 4k random writes (QD32, 2 ms link): the writer ran at ${iops} IOPS throughout; ` +
    `the leg reconnected ${rebuildingAt === undefined ? '?' : ((rebuildingAt - healedAt) / 1000).toFixed(1)} s after the link healed ` +
    `(backoff), copied ${regions} of ${status?.regionCount ?? '?'} regions and was in sync ` +
    `${((inSyncAt - (rebuildingAt ?? healedAt)) / 1000).toFixed(1)} s later (status ${status?.health ?? '?'})`);
}
