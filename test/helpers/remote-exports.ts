import type { ExecutionContext } from 'ava';
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { startLegServer } from './leg-server.js';
import { freePort, makeTempDir } from './tools.js';
import { waitUntil } from './wait.js';

/** The NBD servers a remote leg is tested against: our own plain export and the three the ecosystem runs. */
export const remoteServerKinds = ['nbd-mirror', 'nbdkit', 'qemu-nbd', 'nbd-server'] as const;
export type RemoteServerKind = typeof remoteServerKinds[number];

export interface RemoteExport {
  kind: RemoteServerKind;
  /** The file the server exports (to compare legs byte for byte). */
  file: string;
  uri: string;
  /** Ends the server (SIGKILL when `abruptly`); the file stays. */
  stop(abruptly?: boolean): Promise<void>;
  /** Serves the same file again on the same address (a restarted remote). */
  restart(): Promise<void>;
  /**
   * Stops the server process (SIGSTOP) and returns once every one of its
   * threads is stopped, so nothing it was woken for is still answered;
   * the returned function resumes it. Spawned servers only (nbdkit, qemu-nbd).
   */
  freeze(): Promise<() => void>;
}

/**
 * Serves `file` (created sparse at `sizeBytes` if missing) with one kind of
 * NBD server on 127.0.0.1 or a unix socket, and waits until it greets.
 * Teardown stops it.
 */
export async function serveRemote(t: ExecutionContext, kind: RemoteServerKind, options: { sizeBytes: number; file?: string; unix?: boolean;
  /** TLS required (nbdkit and qemu-nbd): x509 from a server folder (clients verified with verifyPeer), or a psktool file. */
  tls?: { certificates?: string; verifyPeer?: boolean; psk?: string } }): Promise<RemoteExport> {
  if (options.tls && kind !== 'nbdkit' && kind !== 'qemu-nbd') throw new Error(`serveRemote: TLS is set up for nbdkit and qemu-nbd only, not ${kind}`);
  const dir = makeTempDir(`remote-${kind}`);
  const file = options.file ?? path.join(dir, 'export.img');
  if (!fs.existsSync(file)) fs.writeFileSync(file, '');
  if (fs.statSync(file).size < options.sizeBytes) fs.truncateSync(file, options.sizeBytes);
  const port = await freePort();
  const socketPath = path.join(dir, 'nbd.sock');
  const unix = options.unix ?? false;
  let stopCurrent: ((abruptly: boolean) => Promise<void>) | undefined;
  let spawnedPid: number | undefined;
  let uri = '';

  /**
   * nbd-server serves one client and exits when it does not fork (-d), so it
   * runs as the daemon it is meant to be, found by its PID file; a
   * connection is one forked child, which an abrupt stop ends too.
   */
  const startNbdServer = async (): Promise<void> => {
    const config = path.join(dir, 'nbd-server.conf');
    const pidFile = path.join(dir, 'nbd-server.pid');
    fs.rmSync(pidFile, { force: true });
    if (unix) fs.rmSync(socketPath, { force: true });
    // Port 0 would mean inetd mode, so a unix-socket server listens on a free TCP port too.
    fs.writeFileSync(config, `[generic]\n${unix ? `unixsock = ${socketPath}\n` : ''}listenaddr = 127.0.0.1\nport = ${port}\n` +
      `[disk]\nexportname = ${file}\nflush = true\nfua = true\ntrim = true\n`);
    uri = unix ? `nbd+unix:///disk?socket=${socketPath}` : `nbd://127.0.0.1:${port}/disk`;
    const launcher = spawn('nbd-server', ['-C', config, '-p', pidFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    launcher.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
    await new Promise<void>((resolve) => launcher.once('exit', () => resolve()));
    const started = await waitUntil(() => fs.existsSync(pidFile) && fs.readFileSync(pidFile, 'utf8').trim() !== '', 10_000, 50);
    if (!started) throw new Error(`nbd-server did not start: ${stderr}`);
    const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
    const ready = await waitUntil(() => (unix ? fs.existsSync(socketPath) : listensOn(port)), 10_000, 50);
    if (!ready) {
      process.kill(pid, 'SIGKILL');
      throw new Error(`nbd-server did not listen: ${stderr}`);
    }
    stopCurrent = async (abruptly) => {
      const children = childrenOf(pid);
      try { process.kill(pid, abruptly ? 'SIGKILL' : 'SIGTERM'); } catch { /* already gone */ }
      if (abruptly) for (const child of children) try { process.kill(child, 'SIGKILL'); } catch { /* already gone */ }
      await waitUntil(() => !fs.existsSync(`/proc/${pid}`) || isZombie(pid), 10_000, 20);
      await waitUntil(() => !listensOn(port), 5000, 20);
    };
  };

  const start = async (): Promise<void> => {
    spawnedPid = undefined;
    if (kind === 'nbd-mirror') {
      // In process, over the file as a plain leg; the port is the one it was first given.
      const server = await startLegServer(t, { sizeBytes: options.sizeBytes, existingPath: file, unix, port });
      uri = unix ? `nbd+unix:///?socket=${server.address as string}` : `nbd://127.0.0.1:${server.address as number}/`;
      stopCurrent = () => server.close();
      return;
    }
    let args: string[];
    if (kind === 'nbdkit') {
      const tlsArgs = !options.tls ? [] : ['--tls=require', ...(options.tls.psk ? [`--tls-psk=${options.tls.psk}`]
        : [`--tls-certificates=${options.tls.certificates}`, ...(options.tls.verifyPeer ? ['--tls-verify-peer'] : [])])];
      args = ['--foreground', '--exit-with-parent', ...tlsArgs, ...(unix ? ['-U', socketPath] : ['-i', '127.0.0.1', '-p', String(port)]), 'file', file];
      uri = unix ? `nbd+unix:///?socket=${socketPath}` : `nbd://127.0.0.1:${port}/`;
    } else if (kind === 'qemu-nbd') {
      const tls = options.tls;
      const tlsArgs = !tls ? [] : ['--object', tls.psk
        ? `tls-creds-psk,id=tls0,dir=${path.dirname(tls.psk)},endpoint=server`
        : `tls-creds-x509,id=tls0,dir=${tls.certificates},endpoint=server,verify-peer=${tls.verifyPeer ? 'on' : 'off'}`, '--tls-creds', 'tls0'];
      args = ['-f', 'raw', '--persistent', '--shared=8', '--cache=writeback', '--discard=unmap', '-x', 'disk', ...tlsArgs,
        ...(unix ? ['-k', socketPath] : ['-b', '127.0.0.1', '-p', String(port)]), file];
      uri = unix ? `nbd+unix:///disk?socket=${socketPath}` : `nbd://127.0.0.1:${port}/disk`;
    } else {
      await startNbdServer();
      return;
    }
    if (unix) fs.rmSync(socketPath, { force: true });
    const child: ChildProcess = spawn(kind, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const ready = await waitUntil(() => greets(unix ? { path: socketPath } : { host: '127.0.0.1', port }), 10_000, 50);
    if (!ready) {
      child.kill('SIGKILL');
      throw new Error(`${kind} did not start: ${stderr}`);
    }
    spawnedPid = child.pid;
    stopCurrent = async (abruptly) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(abruptly ? 'SIGKILL' : 'SIGTERM');
      await exited;
    };
  };
  await start();
  const stop = async (abruptly = false): Promise<void> => {
    const current = stopCurrent;
    stopCurrent = undefined;
    await current?.(abruptly);
  };
  t.teardown(async () => {
    await stop(true);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return {
    kind, file, get uri() { return uri; }, stop,
    restart: async () => {
      await stop();
      await start();
    },
    freeze: async () => {
      const pid = spawnedPid;
      if (pid === undefined) throw new Error(`serveRemote: freeze is for spawned servers, not ${kind}`);
      process.kill(pid, 'SIGSTOP');
      const resume = (): void => { try { process.kill(pid, 'SIGCONT'); } catch { /* already gone */ } };
      t.teardown(resume);
      // kill() returns before the stop reaches every thread: until then a
      // thread woken by a request's bytes can still answer it.
      if (!await waitUntil(() => allThreadsStopped(pid), 5000, 5)) throw new Error(`${kind} (pid ${pid}) did not stop within 5 s`);
      return resume;
    },
  };
}

function allThreadsStopped(pid: number): boolean {
  const threads = fs.readdirSync(`/proc/${pid}/task`);
  return threads.every((thread) => {
    try {
      return /^[Tt]/.test(fs.readFileSync(`/proc/${pid}/task/${thread}/stat`, 'latin1').replace(/^.*\) /, ''));
    } catch {
      return true;
    }
  });
}

/** Whether something listens on 127.0.0.1:port (from /proc, without connecting: nbd-server logs every aborted negotiation). */
function listensOn(port: number): boolean {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  return fs.readFileSync('/proc/net/tcp', 'latin1').split('\n')
    .some((line) => line.includes(`:${hexPort} 00000000:0000 0A`));
}

function childrenOf(pid: number): number[] {
  return fs.readdirSync('/proc').filter((entry) => /^\d+$/.test(entry)).filter((entry) => {
    try {
      return Number(fs.readFileSync(`/proc/${entry}/stat`, 'latin1').replace(/^.*\) /, '').split(' ')[1]) === pid;
    } catch {
      return false;
    }
  }).map(Number);
}

function isZombie(pid: number): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/stat`, 'latin1').replace(/^.*\) /, '').startsWith('Z');
  } catch {
    return true;
  }
}

/** Whether a server answers on the address with NBD's greeting. */
export function greets(address: net.NetConnectOpts): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(address);
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once('error', () => done(false));
    socket.once('data', (chunk: Buffer) => done(chunk.subarray(0, 8).toString('latin1') === 'NBDMAGIC'));
  });
}

/**
 * A configuration file in `dir` for a two-leg mirror whose leg 1 is the remote `remoteUri`: admin socket,
 * 1 MiB regions, a quick sweeper (so the bits a test sees are the ones it caused) and a short failfast.
 * `extra` is appended as top-level YAML. Returns the file's path.
 */
export function writeRemoteMirrorConfig(dir: string, remoteUri: string, options: { sizeBytes: number; failfastMs: number; extra?: string }): string {
  const file = path.join(dir, 'config.yaml');
  fs.writeFileSync(file, `listen:
  admin: admin.sock
storage:
  sizeBytes: ${options.sizeBytes}
  regionSize: 1MiB
  sweepIntervalMs: 300
  log: mirror.log
  legs:
    - path: leg0.img
    - path: "${remoteUri}"
      failfastMs: ${options.failfastMs}
${options.extra ?? ''}`);
  return file;
}
