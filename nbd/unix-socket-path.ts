import fs from 'node:fs';
import net from 'node:net';

/** A probe that neither connects nor fails in this long finds the socket busy, not free. */
const probeTimeoutMs = 2000;

/**
 * Makes `socketPath` free to listen on. A socket file left by a server that is
 * gone is removed. One that a live server still answers on is refused: taking
 * it over would send that server's clients to another disk. Anything that is
 * not a socket is never removed.
 */
export async function claimUnixSocketPath(socketPath: string, what: string): Promise<void> {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(socketPath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  if (!stat.isSocket()) throw new Error(`${what} ${socketPath} exists and is not a socket; it is not replaced`);
  const probe = await probeSocket(socketPath);
  if (probe !== 'free') throw new Error(`${what} ${socketPath} is in use by another server (${probe})`);
  fs.unlinkSync(socketPath);
}

/** Removes the socket file a listener of ours created, once it is closed. */
export function removeOwnSocket(socketPath: string): void {
  try {
    if (fs.lstatSync(socketPath).isSocket()) fs.unlinkSync(socketPath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
}

function probeSocket(socketPath: string): Promise<'free' | string> {
  return new Promise((resolve) => {
    const probe = net.connect(socketPath);
    const done = (verdict: string): void => {
      clearTimeout(timer);
      probe.destroy();
      resolve(verdict);
    };
    const timer = setTimeout(() => done(`no answer within ${probeTimeoutMs} ms`), probeTimeoutMs);
    probe.once('connect', () => done('it accepts connections'));
    probe.once('error', (error: NodeJS.ErrnoException) => {
      // Refused (or gone meanwhile): nobody listens, so the file is a leftover.
      done(error.code === 'ECONNREFUSED' || error.code === 'ENOENT' ? 'free' : `connecting gave ${error.code}`);
    });
  });
}
