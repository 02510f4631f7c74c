/**
 * The TLS table of npm run bench (BENCH_ONLY=tls): one plain leg served by
 * us with and without TLS, beside nbdkit's file plugin with and without
 * --tls=require and qemu-nbd with --tls-creds, on identical files, one
 * x509 certificate set for all, the same client (fio's nbd engine, libnbd
 * over GnuTLS) presenting the same client certificate to each.
 */
import fs from 'node:fs';
import path from 'node:path';
import { startServerProcess } from '../test/helpers/server-process.js';
import { makePki } from '../test/helpers/tls-files.js';
import { freePort } from '../test/helpers/tools.js';
import type { FioJob } from './fio.js';
import { fill } from './mirror.js';
import { type BenchServer, blankFile, measureJob, printJob, printPeakMemory, startPeer } from './side-by-side.js';

export const tlsJobs: FioJob[] = [
  { name: '4k-randread-qd32', rw: 'randread', blockSize: '4k', iodepth: 32 },
  { name: '1m-seqread-qd8', rw: 'read', blockSize: '1m', iodepth: 8 },
  { name: '1m-seqwrite-qd8', rw: 'write', blockSize: '1m', iodepth: 8 },
];

type ServerName = 'ours' | 'ours-tls' | 'nbdkit' | 'nbdkit-tls' | 'qemu-nbd-tls';

const ratios: Array<[ServerName, ServerName]> = [['ours-tls', 'nbdkit-tls'], ['ours-tls', 'qemu-nbd-tls'], ['ours-tls', 'ours'],
  ['nbdkit-tls', 'nbdkit']];

function blank(dir: string, name: string, sizeBytes: number): string {
  return blankFile(path.join(dir, name), sizeBytes);
}

async function startServers(dir: string, sizeBytes: number): Promise<Array<BenchServer<ServerName>>> {
  const pki = await makePki(dir, 'bench-pki');
  // fio's nbd engine refuses URIs naming local files (tls-certificates=), so
  // libnbd finds the client's credentials in its default folder, $HOME/.pki/libnbd.
  const home = path.join(dir, 'tls-client-home');
  fs.cpSync(pki.clientDir, path.join(home, '.pki', 'libnbd'), { recursive: true });
  const clientEnv = { HOME: home };
  const tlsHost = 'localhost';
  const servers: Array<BenchServer<ServerName>> = [];
  const ours = async (name: ServerName, file: string, tlsArgs: string[]): Promise<void> => {
    const process = await startServerProcess(['--leg', file, '--no-unix', '--no-cache', ...tlsArgs]);
    const tls = tlsArgs.length > 0;
    const uri = tls ? `nbds://${tlsHost}:${process.port}/` : process.uri();
    servers.push({ name, uri, pid: process.pid, files: [file], clientEnv: tls ? clientEnv : undefined, stop: async () => { await process.stop(); } });
  };
  await ours('ours', blank(dir, 'tls-ours-plain.img', sizeBytes), []);
  await ours('ours-tls', blank(dir, 'tls-ours.img', sizeBytes), ['--tls', 'require', '--tls-certificates', pki.serverDir]);
  const nbdkit = async (name: ServerName, file: string, tls: boolean): Promise<void> => {
    const port = await freePort();
    const args = ['-f', '-i', '127.0.0.1', '-p', String(port), ...(tls ? ['--tls=require', `--tls-certificates=${pki.serverDir}`] : []), 'file', file];
    const uri = tls ? `nbds://${tlsHost}:${port}/` : `nbd://127.0.0.1:${port}/`;
    servers.push(await startPeer(name, 'nbdkit', args, uri, [file], tls ? clientEnv : undefined));
  };
  await nbdkit('nbdkit', blank(dir, 'tls-nbdkit-plain.img', sizeBytes), false);
  await nbdkit('nbdkit-tls', blank(dir, 'tls-nbdkit.img', sizeBytes), true);
  const qemuFile = blank(dir, 'tls-qemu.img', sizeBytes);
  const qemuPort = await freePort();
  // verify-peer=off as ours and nbdkit's defaults; --persistent keeps serving across fio's connections.
  servers.push(await startPeer('qemu-nbd-tls', 'qemu-nbd', ['--object', `tls-creds-x509,id=tls0,dir=${pki.serverDir},endpoint=server,verify-peer=off`,
    '--tls-creds', 'tls0', '-f', 'raw', '-b', '127.0.0.1', '-p', String(qemuPort), '--persistent', '--shared', '8', '-x', '', qemuFile],
  `nbds://${tlsHost}:${qemuPort}/`, [qemuFile], clientEnv));
  return servers;
}

export async function benchTls(options: { dir: string; sizeBytes: number; seconds: number; rounds: number; jobs?: string[] }): Promise<void> {
  const { dir, sizeBytes, seconds, rounds } = options;
  console.log('\nTLS (x509, TLS 1.3 as negotiated by GnuTLS): one plain leg --no-cache, plaintext and --tls require | nbdkit file, ' +
    'plaintext and --tls=require | qemu-nbd --tls-creds');
  const servers = await startServers(dir, sizeBytes);
  try {
    for (const server of servers) await fill(server.uri, sizeBytes, server.clientEnv);
    for (const job of tlsJobs.filter((candidate) => options.jobs?.includes(candidate.name) ?? true)) {
      printJob(job, servers, await measureJob(servers, job, { seconds, rounds, sizeBytes }), ratios);
    }
    printPeakMemory(servers);
  } finally {
    for (const server of servers) await server.stop().catch(() => undefined);
  }
}
