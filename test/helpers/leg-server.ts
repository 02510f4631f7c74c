import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import { FileLeg } from '../../backends/file-leg.js';
import { type ConnectionOptions, defaultConnectionOptions } from '../../nbd/connection.js';
import type { ExportTable } from '../../nbd/negotiation.js';
import { NbdServer } from '../../nbd/server.js';
import { makeTempDir } from './tools.js';

/** An in-process server over one file leg, for tests that watch the server's own counters. */
export interface LegServer {
  server: NbdServer;
  leg: FileLeg;
  /** The leg's file. */
  legPath: string;
  /** Where clients connect: a TCP port, or the unix socket path. */
  address: number | string;
  close(): Promise<void>;
}

export async function startLegServer(t: ExecutionContext, options: {
  sizeBytes: number;
  /** Bytes the leg file starts with (else it is created empty). */
  contents?: Buffer;
  unix?: boolean;
  /** Serve this file (kept on close) instead of a new one. */
  existingPath?: string;
  /** Listen on this TCP port instead of any free one (a restarted server keeps its address). */
  port?: number;
  connection?: Partial<Omit<ConnectionOptions, 'logger'>>;
}): Promise<LegServer> {
  const dir = makeTempDir('leg-server');
  const legPath = options.existingPath ?? path.join(dir, 'leg.img');
  if (options.contents !== undefined) fs.writeFileSync(legPath, options.contents);
  const leg = await FileLeg.open({ path: legPath, createSizeBytes: options.sizeBytes });
  const entry = { name: '', description: '', device: leg, readOnly: false };
  const exports: ExportTable = { find: () => entry, list: () => [entry] };
  const server = new NbdServer(exports, {
    tcp: options.unix ? undefined : { host: '127.0.0.1', port: options.port ?? 0 },
    unixPath: options.unix ? path.join(dir, 'nbd.sock') : undefined,
    maxConnections: 8,
    // The sendfile path is off in the server's defaults; the tests that serve a leg directly exercise it.
    connection: { ...defaultConnectionOptions, fileReplyBytesMin: 128 * 1024, ...options.connection },
    logger: pino({ level: 'silent' }),
  });
  const addresses = await server.listen();
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => (closing ??= (async () => {
    await server.shutdown();
    await leg.close();
    fs.rmSync(dir, { recursive: true, force: true });
  })());
  t.teardown(close);
  return { server, leg, legPath, address: addresses.unixPath ?? addresses.tcp!.port, close };
}
