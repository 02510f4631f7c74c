import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { MirrorController } from '../mirror/controller.js';
import type { PageCache } from '../pagecache/page-cache.js';
import { AdminServer } from '../tools/admin-server.js';
import type { BlockDevice } from '../blockdev/types.js';
import type { Config } from '../config/schema.js';
import type { Blame } from '../config/load.js';
import { ConfigError } from '../config/schema.js';
import { ensureDefaultDataDir } from '../config/load.js';
import { defaultConnectionOptions } from '../nbd/connection.js';
import { InputPoll } from '../nbd/input-poll.js';
import type { DirtyBitmapSource, ExportEntry, ExportTable } from '../nbd/negotiation.js';
import type { BackupView } from '../cbt/backup-view.js';
import { CheckedDevice } from '../blockdev/checked-device.js';
import type { Backups } from '../cbt/backups.js';
import { RequestStats } from '../nbd/request-stats.js';
import { type ListenAddresses, NbdServer } from '../nbd/server.js';
import { AllowList } from '../nbd/admission.js';
import { loadTlsServer, type TlsServer, TlsSetupError } from '../nbd/tls-credentials.js';
import { EventBus } from '../observe/event-bus.js';
import { buildRegistry, MetricsServer } from '../observe/metrics.js';
import { openStorageStack, type StorageStack } from '../stack/storage-stack.js';
import type { Sweeper } from '../stack/top-down.js';

export interface RunningServer {
  server: NbdServer;
  /** What clients talk to: the cache if configured, else the mirror or the plain leg. */
  device: BlockDevice;
  mirror: MirrorController | undefined;
  cache: PageCache | undefined;
  /** The periodic top-down sweep (storage.sweepIntervalMs). */
  sweeper: Sweeper;
  addresses: ListenAddresses & { metrics?: { host: string; port: number } };
  events: EventBus;
  /**
   * SIGHUP: TLS credentials and mode, the allow list and the admission limits
   * apply to clients that connect from now on. Throws (changing nothing)
   * when the new credentials do not check out.
   */
  reconfigureClients(config: Config, blame?: Blame): void;
  /** Graceful stop: no new clients, in-flight requests finish, flush, close. */
  stop(): Promise<void>;
}

export interface StartOptions {
  /** Makes a bad setting's error name its flag, or its key and the file it came from. */
  blame?: Blame;
  /** The embedded default's folder, written only once everything else checked out (see LoadedConfig). */
  pendingDataDir?: string;
  /** `replace` moved a leg: record it; the answer is added to the operator's reply. */
  onLegPathChanged?: (slot: number, path: string) => string | undefined;
}

/**
 * The one export, and while backups run their point-in-time views as
 * `<export>@NAME`, read-only, each offering its frozen --since bitmap.
 */
export function singleExport(config: Config, device: BlockDevice, dirtyBitmaps?: DirtyBitmapSource, backups?: Backups): ExportTable {
  const entry: ExportEntry = {
    name: config.export.name,
    description: config.export.description,
    device,
    readOnly: config.export.readOnly,
    dirtyBitmaps,
  };
  // One entry per view: a connection recognises the export it negotiated contexts for by identity.
  const viewEntries = new WeakMap<BackupView, ExportEntry>();
  const viewEntry = (view: BackupView): ExportEntry => {
    let found = viewEntries.get(view);
    if (found === undefined) {
      found = { name: `${entry.name}@${view.name}`, description: `point-in-time backup ${view.name} of ${entry.name}`,
        device: CheckedDevice.wrap(view, `backup ${view.name}`), readOnly: true, dirtyBitmaps: view };
      viewEntries.set(view, found);
    }
    return found;
  };
  return {
    find: (name) => {
      if (name === '' || name === entry.name) return entry;
      const view = name.startsWith(`${entry.name}@`) ? backups?.view(name.slice(entry.name.length + 1)) : undefined;
      return view ? viewEntry(view) : undefined;
    },
    list: () => [entry, ...(backups?.all() ?? []).map(viewEntry)],
  };
}

/** A listener that cannot be bound, reported against the key (and file) that named it, without a stack. */
function listenError(error: unknown, key: string, address: string, blame: Blame | undefined): Error {
  const code = (error as NodeJS.ErrnoException).code;
  const problem = code === 'EADDRINUSE' ? `${address} is in use: another program listens there (choose another address)`
    : code === 'ENOTFOUND' || code === 'EAI_AGAIN' ? `cannot resolve the host of ${address} (${code})`
      : code === 'EADDRNOTAVAIL' ? `${address} is not an address of this machine (EADDRNOTAVAIL)`
        : code === 'EACCES' ? `${address}: permission denied (ports below 1024 need privileges)`
          : `${address}: ${(error as Error).message}`;
  return blame?.(key, problem) ?? new ConfigError(key, problem);
}

function formatAddress(address: { host: string; port: number }): string {
  return address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/**
 * Starts the server in an order that writes nothing until everything that
 * can fail cheaply has been checked: the configuration is already valid;
 * then every listener is bound (a port in use or a host that does not
 * resolve is found here); only then is the embedded default's folder
 * written and the storage created or opened; clients that connected
 * meanwhile wait and are served once the export is ready.
 */
export async function startServer(config: Config, logger: Logger, options: StartOptions = {}): Promise<RunningServer> {
  if (config.export.readOnly && config.storage.log !== undefined) {
    throw new ConfigError('export.readOnly', 'a mirror is served read-write (resync and the sweeper write); serve one leg read-only instead');
  }
  const clients = clientSettings(config, options.blame);
  const events = new EventBus();
  const requestStats = config.listen.metrics ? new RequestStats() : undefined;
  const server = new NbdServer(undefined, {
    tcp: config.listen.tcp,
    unixPath: config.listen.unix,
    maxConnections: clients.maxConnections,
    negotiatingMax: clients.negotiatingMax,
    perAddressMax: clients.perAddressMax,
    allow: clients.allow,
    connection: {
      tls: clients.tls,
      ...defaultConnectionOptions,
      handshakeTimeoutMs: config.limits.handshakeTimeoutMs,
      inFlightRequestsMax: config.limits.inFlightRequestsMax,
      inFlightBytesMax: config.limits.inFlightBytesMax,
      fileReplyBytesMin: config.limits.sendfileReplyBytes > 0 ? config.limits.sendfileReplyBytes : Infinity,
      inputPoll: new InputPoll(config.limits.pollMaxMicroseconds),
      requestStats,
    },
    logger,
  });
  server.onClient = (change, client) => events.emit({ event: change === 'attached' ? 'client-attached' : 'client-detached', ...client });
  server.onRefusal = (reason, remote) => events.emit({ event: 'client-refused', reason, remote });
  const admin = config.listen.admin === undefined ? undefined : new AdminServer(logger, events);
  let registry: ReturnType<typeof buildRegistry> | undefined;
  const metrics = config.listen.metrics === undefined ? undefined : new MetricsServer(() => registry);
  const addresses: RunningServer['addresses'] = { tcp: undefined, unixPath: undefined };
  let createdDataDir: string | undefined;
  const closeListeners = async (): Promise<void> => {
    await server.shutdown();
    await admin?.close();
    await metrics?.close();
  };
  const { blame } = options;
  try {
    try {
      addresses.tcp = await server.listenTcp();
    } catch (error) {
      throw listenError(error, 'listen.tcp', formatAddress(config.listen.tcp!), blame);
    }
    if (metrics) {
      try {
        addresses.metrics = await metrics.listen(config.listen.metrics!);
      } catch (error) {
        throw listenError(error, 'listen.metrics', formatAddress(config.listen.metrics!), blame);
      }
    }
    const pending = options.pendingDataDir;
    if (pending !== undefined && !fs.existsSync(pending)) {
      fs.mkdirSync(pending, { recursive: true });
      createdDataDir = pending;
    }
    addresses.unixPath = await server.listenUnix();
    if (admin) await admin.listen(config.listen.admin!);
  } catch (error) {
    await closeListeners();
    if (createdDataDir !== undefined) fs.rmSync(createdDataDir, { recursive: true, force: true });
    throw error;
  }
  if (options.pendingDataDir !== undefined) ensureDefaultDataDir(options.pendingDataDir);

  let stack: StorageStack;
  try {
    stack = await openStorageStack(config, logger, { events: events.sink });
  } catch (error) {
    await closeListeners();
    throw error;
  }
  const { device, mirror, cache, sweeper, target } = stack;
  if (mirror) mirror.onLegPathChanged = options.onLegPathChanged;
  admin?.attach(target);
  if (requestStats) {
    registry = buildRegistry({ target, requests: requestStats, events, connections: () => server.connectionCount,
      requestsInFlight: () => server.requestsInFlight });
  }
  server.serve(singleExport(config, device, stack.checkpoints, stack.backups));

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => (stopping ??= (async () => {
    await closeListeners();
    await stack.close();
  })());
  const reconfigureClients = (next: Config, nextBlame?: Blame): void => server.reconfigure(clientSettings(next, nextBlame));
  return { server, device, mirror, cache, sweeper, addresses, events, reconfigureClients, stop };
}

/**
 * Who may connect and how they are served: TLS credentials (read and checked
 * here, before any listener is bound or on SIGHUP before anything changes,
 * so a bad file is reported with its name) and the admission limits.
 */
function clientSettings(config: Config, blame: Blame | undefined): {
  tls: TlsServer | undefined; allow: AllowList | undefined; maxConnections: number; negotiatingMax: number; perAddressMax: number;
} {
  let tls: TlsServer | undefined;
  try {
    tls = loadTlsServer(config.tls);
  } catch (error) {
    if (error instanceof TlsSetupError) throw blame?.(error.key, error.problem) ?? new ConfigError(error.key, error.problem);
    throw error;
  }
  return {
    tls,
    allow: config.listen.allow === undefined ? undefined : new AllowList(config.listen.allow),
    maxConnections: config.limits.maxConnections,
    negotiatingMax: config.limits.negotiatingMax,
    perAddressMax: config.limits.perAddressMax,
  };
}

/** How to attach, printed once listening. */
export function attachHints(config: Config, addresses: ListenAddresses): string[] {
  const name = encodeURIComponent(config.export.name);
  const hints: string[] = [];
  const { mode, psk } = config.tls;
  // libnbd's URI parameters and qemu's tls-creds objects name the client's own credentials, not the server's folder.
  const tlsQuery = psk !== undefined ? 'tls-psk-file=KEYS.psk' : 'tls-certificates=CLIENT-DIR';
  const tlsUser = psk !== undefined ? 'USER@' : '';
  const qemuCreds = psk !== undefined ? 'tls-creds-psk,id=tls0,dir=KEYS-DIR,username=USER,endpoint=client'
    : 'tls-creds-x509,id=tls0,dir=CLIENT-DIR,endpoint=client';
  if (addresses.tcp !== undefined) {
    const { host, port } = addresses.tcp;
    // An IPv6 address needs brackets in a URI (RFC 3986); nbd-client takes it bare.
    const uriHost = host.includes(':') ? `[${host}]` : host;
    if (mode !== 'off') {
      hints.push(`nbdinfo 'nbds://${tlsUser}${uriHost}:${port}/${name}?${tlsQuery}'`);
      hints.push(`qemu-img info --object ${qemuCreds} --image-opts driver=nbd,host=${host},port=${port},export=${config.export.name},tls-creds=tls0`);
    }
    if (mode !== 'require') {
      hints.push(`nbdinfo nbd://${uriHost}:${port}/${name}`);
      hints.push(`qemu-img info nbd://${uriHost}:${port}/${name}`);
      hints.push(`nbd-client ${host} ${port} /dev/nbd0 -N '${config.export.name}'`);
    }
  }
  if (addresses.unixPath !== undefined) {
    const socket = path.resolve(addresses.unixPath);
    if (mode !== 'off') hints.push(`nbdinfo 'nbds+unix://${tlsUser}/${name}?socket=${socket}&${tlsQuery}'`);
    if (mode !== 'require') hints.push(`nbdinfo 'nbd+unix:///${name}?socket=${socket}'`);
  }
  return hints;
}
