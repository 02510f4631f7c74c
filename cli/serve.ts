import path from 'node:path';
import type { Logger } from 'pino';
import { FileLeg } from '../backends/file-leg.js';
import { MirrorController, type MirrorSettings } from '../mirror/controller.js';
import { AdminServer } from '../tools/admin-server.js';
import type { BlockDevice } from '../blockdev/types.js';
import type { Config } from '../config/schema.js';
import { ConfigError } from '../config/schema.js';
import { defaultConnectionOptions } from '../nbd/connection.js';
import type { ExportEntry, ExportTable } from '../nbd/negotiation.js';
import { type ListenAddresses, NbdServer } from '../nbd/server.js';

export interface RunningServer {
  server: NbdServer;
  device: BlockDevice;
  mirror: MirrorController | undefined;
  addresses: ListenAddresses;
  /** Graceful stop: no new clients, in-flight requests finish, flush, close. */
  stop(): Promise<void>;
}

export function mirrorSettings(config: Config): MirrorSettings {
  const { storage } = config;
  return {
    logPath: storage.log!,
    legs: storage.legs.map((leg) => ({ ...leg })),
    sizeBytes: storage.sizeBytes,
    regionSizeBytes: storage.regionSizeBytes,
    readPolicy: storage.readPolicy,
    preferredLeg: storage.preferredLeg,
    sweepIntervalMs: storage.sweepIntervalMs,
    resyncBytesPerSecond: storage.resyncBytesPerSecond,
    createIfMissing: true,
    force: storage.force,
  };
}

/** One plain leg (no storage.log): the export is the file itself. */
export async function openPlainLeg(config: Config, logger: Logger): Promise<BlockDevice> {
  if (config.storage.legs.length !== 1) {
    throw new ConfigError('storage.legs', `${config.storage.legs.length} legs configured without storage.log`);
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

export async function startServer(config: Config, logger: Logger,
  options: { onLegPathChanged?: (slot: number, path: string) => void } = {}): Promise<RunningServer> {
  if (config.export.readOnly && config.storage.log !== undefined) {
    throw new ConfigError('export.readOnly', 'a mirror is served read-write (resync and the sweeper write); serve one leg read-only instead');
  }
  const mirror = config.storage.log === undefined ? undefined : await MirrorController.open(mirrorSettings(config), logger);
  const device = mirror ? mirror.device : await openPlainLeg(config, logger);
  if (mirror) mirror.onLegPathChanged = options.onLegPathChanged;
  let admin: AdminServer | undefined;
  if (mirror && config.listen.admin !== undefined) {
    admin = new AdminServer(mirror, logger);
    try {
      await admin.listen(config.listen.admin);
    } catch (error) {
      await mirror.shutdown();
      await mirror.close();
      throw error;
    }
  }
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
    await admin?.close();
    if (mirror) await mirror.shutdown();
    await device.close();
    throw error;
  }
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => (stopping ??= (async () => {
    await server.shutdown();
    await admin?.close();
    try {
      if (mirror) await mirror.shutdown();
      else await device.flush();
    } finally {
      await device.close();
    }
  })());
  return { server, device, mirror, addresses, stop };
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
