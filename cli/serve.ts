import path from 'node:path';
import type { Logger } from 'pino';
import { FileLeg } from '../backends/file-leg.js';
import type { BlockDevice } from '../blockdev/types.js';
import type { Config } from '../config/schema.js';
import { ConfigError } from '../config/schema.js';
import { defaultConnectionOptions } from '../nbd/connection.js';
import type { ExportEntry, ExportTable } from '../nbd/negotiation.js';
import { type ListenAddresses, NbdServer } from '../nbd/server.js';

export interface RunningServer {
  server: NbdServer;
  device: BlockDevice;
  addresses: ListenAddresses;
  /** Graceful stop: no new clients, in-flight requests finish, flush, close. */
  stop(): Promise<void>;
}

export async function openStorage(config: Config, logger: Logger): Promise<BlockDevice> {
  if (config.storage.legs.length !== 1) {
    throw new ConfigError('storage.legs', `${config.storage.legs.length} legs configured; this build serves exactly one`);
  }
  const leg = config.storage.legs[0];
  const device = await FileLeg.open({
    path: leg.path,
    readOnly: config.export.readOnly,
    createSizeBytes: config.export.readOnly ? undefined : config.storage.sizeBytes,
  });
  logger.info({ path: leg.path, sizeBytes: device.sizeBytes }, 'leg opened');
  return device;
}

export function singleExport(config: Config, device: BlockDevice): ExportTable {
  const entry: ExportEntry = {
    name: config.export.name,
    description: config.export.description,
    device,
    readOnly: config.export.readOnly,
  };
  return {
    find: (name) => (name === '' || name === entry.name ? entry : undefined),
    list: () => [entry],
  };
}

export async function startServer(config: Config, logger: Logger): Promise<RunningServer> {
  const device = await openStorage(config, logger);
  const server = new NbdServer(singleExport(config, device), {
    tcp: config.listen.tcp,
    unixPath: config.listen.unix,
    maxConnections: config.limits.maxConnections,
    connection: {
      ...defaultConnectionOptions,
      handshakeTimeoutMs: config.limits.handshakeTimeoutMs,
      inFlightRequestsMax: config.limits.inFlightRequestsMax,
      inFlightBytesMax: config.limits.inFlightBytesMax,
    },
    logger,
  });
  let addresses: ListenAddresses;
  try {
    addresses = await server.listen();
  } catch (error) {
    await device.close();
    throw error;
  }
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => (stopping ??= (async () => {
    await server.shutdown();
    try {
      await device.flush();
    } finally {
      await device.close();
    }
  })());
  return { server, device, addresses, stop };
}

/** How to attach, printed once listening. */
export function attachHints(config: Config, addresses: ListenAddresses): string[] {
  const name = encodeURIComponent(config.export.name);
  const hints: string[] = [];
  if (addresses.tcp !== undefined) {
    const { host, port } = addresses.tcp;
    hints.push(`nbdinfo nbd://${host}:${port}/${name}`);
    hints.push(`qemu-img info nbd://${host}:${port}/${name}`);
    hints.push(`nbd-client ${host} ${port} /dev/nbd0 -N '${config.export.name}'`);
  }
  if (addresses.unixPath !== undefined) {
    hints.push(`nbdinfo 'nbd+unix:///${name}?socket=${path.resolve(addresses.unixPath)}'`);
  }
  return hints;
}
