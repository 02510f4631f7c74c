import path from 'node:path';
import type { Logger } from 'pino';
import { type OpenedLeg, openLeg } from '../backends/leg-spec.js';
import { MirrorController, type MirrorSettings } from '../mirror/controller.js';
import { PageCache } from '../pagecache/page-cache.js';
import { type AdminTarget, AdminServer } from '../tools/admin-server.js';
import type { BlockDevice } from '../blockdev/types.js';
import type { Config } from '../config/schema.js';
import { ConfigError } from '../config/schema.js';
import { defaultConnectionOptions } from '../nbd/connection.js';
import { InputPoll } from '../nbd/input-poll.js';
import type { ExportEntry, ExportTable } from '../nbd/negotiation.js';
import { type ListenAddresses, NbdServer } from '../nbd/server.js';

export interface RunningServer {
  server: NbdServer;
  /** What clients talk to: the cache if configured, else the mirror or the plain leg. */
  device: BlockDevice;
  mirror: MirrorController | undefined;
  cache: PageCache | undefined;
  addresses: ListenAddresses;
  /** Graceful stop: no new clients, in-flight requests finish, flush, close. */
  stop(): Promise<void>;
}

export function mirrorSettings(config: Config): MirrorSettings {
  const { storage } = config;
  return {
    logPath: storage.log!,
    logWrap: storage.logWrap,
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

/** One plain leg (no storage.log): the export is the file (or thin pool) itself. */
export async function openPlainLeg(config: Config, logger: Logger): Promise<OpenedLeg> {
  if (config.storage.legs.length !== 1) {
    throw new ConfigError('storage.legs', `${config.storage.legs.length} legs configured without storage.log`);
  }
  const leg = config.storage.legs[0];
  if (leg.thin && config.export.readOnly) throw new ConfigError('export.readOnly', 'a thin pool is served read-write');
  const opened = await openLeg(leg, undefined, logger, {
    readOnly: config.export.readOnly,
    createSizeBytes: config.export.readOnly ? undefined : config.storage.sizeBytes,
  });
  logger.info({ path: leg.path, sizeBytes: opened.device.sizeBytes, thin: leg.thin !== undefined }, 'leg opened');
  return opened;
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
  const plain = mirror ? undefined : await openPlainLeg(config, logger);
  const below: BlockDevice = mirror ? mirror.device : plain!.device;
  const cache = config.cache && !config.export.readOnly
    ? new PageCache(below, { ...config.cache, logger: logger.child({ component: 'cache' }) }) : undefined;
  if (mirror && cache) mirror.attachCache(cache);
  const device = cache ?? below;
  if (mirror) mirror.onLegPathChanged = options.onLegPathChanged;
  const closeStorage = async (): Promise<void> => {
    try {
      if (mirror) await mirror.shutdown();
      else await device.flush().catch((error: unknown) => logger.error({ err: error }, 'final flush failed: data may not be durable'));
    } finally {
      await device.close();
    }
  };
  let admin: AdminServer | undefined;
  if (config.listen.admin !== undefined) {
    const target: AdminTarget = { mirror, cache,
      plain: plain ? { path: config.storage.legs[0].path, sizeBytes: below.sizeBytes, pool: plain.thin } : undefined };
    admin = new AdminServer(target, logger);
    try {
      await admin.listen(config.listen.admin);
    } catch (error) {
      await closeStorage();
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
      inputPoll: new InputPoll(config.limits.pollMaxMicroseconds),
    },
    logger,
  });
  let addresses: ListenAddresses;
  try {
    addresses = await server.listen();
  } catch (error) {
    await admin?.close();
    await closeStorage();
    throw error;
  }
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => (stopping ??= (async () => {
    await server.shutdown();
    await admin?.close();
    await closeStorage();
  })());
  return { server, device, mirror, cache, addresses, stop };
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
