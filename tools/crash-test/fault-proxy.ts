import net from 'node:net';
import { Command, REQUEST_MAGIC } from '../../nbd/constants.js';

/**
 * A TCP proxy on 127.0.0.1 in front of a remote leg's server that can break
 * the link the ways networks do: delay every chunk, stall (a black hole: the
 * connection stays up and nothing passes), reset connections, and cut the
 * link (existing connections reset, new ones refused) until healed.
 */
export interface FaultProxy {
  port: number;
  /** Milliseconds added to every chunk in each direction (0: none). */
  setDelay(ms: number): void;
  /** Nothing passes in either direction until heal(); connections stay open. */
  stall(): void;
  /** Every open connection is reset. */
  reset(): void;
  /** Reset every connection and refuse new ones until heal(). */
  cut(): void;
  /** Undo stall and cut; a stalled connection's held bytes pass on. */
  heal(): void;
  /**
   * The next NBD write request a client sends (a chunk that starts with one) is not passed on: every connection
   * is cut instead, and new ones refused until heal(). Breaks the link at one chosen step, such as a label stamp.
   */
  cutAtNextWrite(): void;
  /** Connections accepted so far. */
  readonly accepted: number;
  close(): Promise<void>;
}

export async function startFaultProxy(target: { host: string; port: number }): Promise<FaultProxy> {
  const pairs = new Set<{ client: net.Socket; upstream: net.Socket }>();
  let delayMs = 0;
  let stalled = false;
  let cut = false;
  let accepted = 0;
  let cutArmed = false;
  const held: Array<() => void> = [];
  const startsWithWrite = (chunk: Buffer): boolean =>
    chunk.length >= 8 && chunk.readUInt32BE(0) === REQUEST_MAGIC && chunk.readUInt16BE(6) === Command.WRITE;

  const forward = (from: net.Socket, to: net.Socket, fromClient: boolean): void => {
    from.on('data', (chunk: Buffer) => {
      if (fromClient && cutArmed && startsWithWrite(chunk)) {
        cutArmed = false;
        proxy.cut();
        return;
      }
      const send = (): void => {
        if (!to.destroyed) to.write(chunk);
      };
      const deliver = (): void => {
        if (stalled) held.push(send);
        else send();
      };
      if (delayMs > 0) setTimeout(deliver, delayMs);
      else deliver();
    });
  };

  const server = net.createServer((client) => {
    if (cut) {
      client.resetAndDestroy();
      return;
    }
    accepted += 1;
    const upstream = net.connect(target);
    const pair = { client, upstream };
    pairs.add(pair);
    const end = (): void => {
      pairs.delete(pair);
      if (!client.destroyed) client.destroy();
      if (!upstream.destroyed) upstream.destroy();
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
    forward(client, upstream, true);
    forward(upstream, client, false);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const resetAll = (): void => {
    for (const { client, upstream } of [...pairs]) {
      client.resetAndDestroy();
      upstream.destroy();
    }
    pairs.clear();
    held.length = 0;
  };
  const proxy: FaultProxy = {
    port: (server.address() as net.AddressInfo).port,
    setDelay: (ms) => { delayMs = ms; },
    stall: () => { stalled = true; },
    reset: resetAll,
    cut: () => {
      cut = true;
      resetAll();
    },
    heal: () => {
      stalled = false;
      cut = false;
      for (const send of held.splice(0)) send();
    },
    cutAtNextWrite: () => { cutArmed = true; },
    get accepted() { return accepted; },
    close: async () => {
      resetAll();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return proxy;
}
