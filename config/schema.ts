import path from 'node:path';
import { type FaultOp, faultOps, type FaultPlan, type FaultRule } from '../faults/fault-device.js';
import type { LegSpec, RemoteSpec, ThinSpec } from '../backends/leg-spec.js';
import { isNbdUri } from '../backends/nbd-client/nbd-uri.js';
import { remoteConnectionsMax, remoteLegDefaults } from '../backends/nbd-client/remote-leg.js';
import { remoteSpecFor } from '../backends/nbd-client/remote-spec.js';
import { type CrashPlan, parseCrashPlan } from '../faults/crash-points.js';
import type { DeviceWrap } from '../faults/device-wrap.js';
import { type CutPolicy, cutPolicies, defaultSectorBytes, validSectorBytes } from '../faults/power-cut-device.js';
import type { ReadPolicy } from '../mirror/mirror-device.js';
import { type PageCacheOptions, writeAroundBytesDefault } from '../pagecache/page-cache.js';
import { AllowList, AllowListError } from '../nbd/admission.js';
import { type TlsSettings, tlsModes } from '../nbd/tls-credentials.js';
import { boundsOf, defaultConfigText, logLevels } from './settings.js';

/** storage.resyncRate when the key is left out: the README's, the default config's and a hand-written config's alike. */
export const resyncRateDefaultBytes = 256 * 1024 * 1024;

/**
 * The server's configuration, as read from YAML and overridden by flags.
 * Every problem is reported with the key it concerns, e.g.
 * `storage.legs[0].path: must be a non-empty string`.
 */
export interface Config {
  listen: {
    /** "host:port", or undefined for no TCP listener. */
    tcp: { host: string; port: number } | undefined;
    /** Unix socket path, or undefined. */
    unix: string | undefined;
    /** Local admin socket for status and operator commands (mirror only), or undefined. */
    admin: string | undefined;
    /** Prometheus endpoint "host:port" (GET /metrics), or undefined (the default: off). */
    metrics: { host: string; port: number } | undefined;
    /** TCP clients allowed (addresses or CIDR networks); undefined: any. */
    allow: string[] | undefined;
  };
  tls: TlsSettings;
  export: {
    name: string;
    description: string;
    readOnly: boolean;
  };
  storage: {
    /** Size of leg files created on first start. */
    sizeBytes: number;
    legs: LegSpec[];
    /** The dirty-region log; set means the legs form a mirror, unset means one plain leg. */
    log: string | undefined;
    /** Crash-toolkit devices under the log (faults, power cut, write log). */
    logWrap: DeviceWrap | undefined;
    regionSizeBytes: number;
    readPolicy: ReadPolicy;
    preferredLeg: number | undefined;
    sweepIntervalMs: number;
    resyncBytesPerSecond: number;
    /** Changed-block tracking granule of checkpoints created from now on (docs/changed-blocks.md). */
    checkpointGranularityBytes: number;
    /** Take in foreign, stale or unlabelled legs and rebuild them fully. */
    force: boolean;
  };
  /** The write-back page cache above the mirror (or the plain leg); undefined when off. */
  cache: CacheConfig | undefined;
  limits: {
    maxConnections: number;
    negotiatingMax: number;
    perAddressMax: number;
    handshakeTimeoutMs: number;
    inFlightRequestsMax: number;
    inFlightBytesMax: number;
    /** Reads at least this large from a plain file leg are sent with sendfile; 0: never. */
    sendfileReplyBytes: number;
    /** After input, the event loop polls up to this long before sleeping (adaptive; 0: never). */
    pollMaxMicroseconds: number;
  };
  log: { level: typeof logLevels[number] };
  /** A named crash point to fire (crash-injection testing only). */
  crash: CrashPlan | undefined;
}

/** The cache's settings as configured; the server adds its logger. */
export type CacheConfig = Omit<PageCacheOptions, 'logger' | 'pageBytes'>;

export class ConfigError extends Error {
  constructor(readonly key: string, readonly problem: string, readonly source = 'configuration') {
    super(`${source}: ${key}: ${problem}`);
    this.name = 'ConfigError';
  }

  /** The same error, reported against another source (the file it came from). */
  from(source: string): ConfigError {
    return new ConfigError(this.key, this.problem, source);
  }
}


const sizeUnits: Record<string, number> = {
  '': 1, b: 1, k: 1024, kb: 1000, kib: 1024, m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3, t: 1024 ** 4, tb: 1000 ** 4, tib: 1024 ** 4,
};

/** Parses 1073741824, "1GiB", "512 MiB", "4k". */
export function parseSize(value: unknown, key: string): number {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value <= 0) throw new ConfigError(key, `size ${value} must be a positive integer`);
    return value;
  }
  if (typeof value !== 'string') throw new ConfigError(key, 'must be a size such as 1073741824 or "1GiB"');
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  const unit = match ? sizeUnits[match[2].toLowerCase()] : undefined;
  if (!match || unit === undefined) throw new ConfigError(key, `"${value}" is not a size (examples: 4096, 64MiB, 1GiB)`);
  const bytes = Math.round(Number(match[1]) * unit);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new ConfigError(key, `"${value}" is out of range`);
  return bytes;
}

/** A size where 0 means off, and `absent` when the key is not given. */
function sizeOrZero(value: unknown, key: string, absent: number): number {
  if (value === undefined) return absent;
  return value === 0 ? 0 : parseSize(value, key);
}

export function parseHostPort(value: unknown, key: string): { host: string; port: number } {
  if (typeof value !== 'string' && typeof value !== 'number') throw new ConfigError(key, 'must be "host:port", e.g. "127.0.0.1:10809"');
  const text = typeof value === 'number' ? String(value) : value;
  // A port alone (qemu-nbd -p, nbdkit -p) or ":port" listens on the loopback address, never on every interface by surprise.
  const portOnly = /^:?(\d+)$/.exec(text.trim());
  const match = portOnly ? [text, '127.0.0.1', undefined, portOnly[1]] : /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text.trim());
  if (!match) throw new ConfigError(key, `"${value}" is not "host:port" (or a port alone, for 127.0.0.1)`);
  const port = Number(match[3]);
  if (port > 65535) throw new ConfigError(key, `port ${port} is above 65535`);
  return { host: (match[1] ?? match[2])!, port };
}

/** Sizes of legs and mirrors are whole 4 KiB blocks (the block size every layer works in). */
function blockMultiple(bytes: number, key: string): number {
  if (bytes % 4096 !== 0) throw new ConfigError(key, `${bytes} must be a multiple of 4096 (e.g. ${Math.ceil(bytes / 4096) * 4096})`);
  return bytes;
}

function objectAt(value: unknown, key: string): Record<string, unknown> {
  if (value === undefined || value === null) return {};
  if (typeof value !== 'object' || Array.isArray(value)) throw new ConfigError(key, 'must be a mapping');
  return value as Record<string, unknown>;
}

function rejectUnknownKeys(value: Record<string, unknown>, known: string[], key: string): void {
  for (const name of Object.keys(value)) {
    if (!known.includes(name)) {
      const where = key === '' ? name : `${key}.${name}`;
      throw new ConfigError(where, `unknown key (expected one of: ${known.join(', ')})`);
    }
  }
}

function stringAt(value: unknown, key: string, fallback: string | undefined, allowEmpty = true): string {
  if (value === undefined || value === null) {
    if (fallback === undefined) throw new ConfigError(key, 'is required (a non-empty string)');
    return fallback;
  }
  if (typeof value !== 'string' || (!allowEmpty && value === '')) {
    throw new ConfigError(key, allowEmpty ? 'must be a string' : 'must be a non-empty string');
  }
  return value;
}

function booleanAt(value: unknown, key: string, fallback: boolean): boolean {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'boolean') throw new ConfigError(key, 'must be true or false');
  return value;
}

/** An integer setting of the settings table: its bounds and default are the enforcing module's. */
function integerSetting(value: unknown, key: string): number {
  const bounds = boundsOf(key);
  return integerAt(value, key, bounds.default, bounds.min, bounds.max);
}

function integerAt(value: unknown, key: string, fallback: number, minimum: number, maximum: number): number {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) throw new ConfigError(key, 'must be an integer');
  if (value < minimum || value > maximum) throw new ConfigError(key, `${value} is outside ${minimum}..${maximum}`);
  return value;
}

/** Builds a Config from parsed YAML; relative paths are resolved against baseDir. */
export function parseConfig(raw: unknown, baseDir: string): Config {
  const root = objectAt(raw, '(top level)');
  rejectUnknownKeys(root, ['listen', 'tls', 'export', 'storage', 'cache', 'limits', 'log', 'crash'], '');
  const listen = objectAt(root.listen, 'listen');
  rejectUnknownKeys(listen, ['tcp', 'unix', 'admin', 'metrics', 'allow'], 'listen');
  const exported = objectAt(root.export, 'export');
  rejectUnknownKeys(exported, ['name', 'description', 'readOnly'], 'export');
  const storage = objectAt(root.storage, 'storage');
  rejectUnknownKeys(storage, ['sizeBytes', 'legs', 'log', 'regionSize', 'readPolicy', 'preferredLeg', 'sweepIntervalMs',
    'resyncRate', 'force', 'checkpointGranularity'], 'storage');
  const limits = objectAt(root.limits, 'limits');
  rejectUnknownKeys(limits, ['maxConnections', 'negotiatingMax', 'perAddressMax', 'handshakeTimeoutMs', 'inFlightRequestsMax', 'inFlightBytesMax',
    'pollMaxMicroseconds', 'sendfileReplyBytes'], 'limits');
  const log = objectAt(root.log, 'log');
  rejectUnknownKeys(log, ['level'], 'log');

  const exportName = stringAt(exported.name, 'export.name', '');
  if (Buffer.byteLength(exportName) > 4096) throw new ConfigError('export.name', 'is longer than 4096 bytes');
  if (exportName.includes('\0')) throw new ConfigError('export.name', 'contains a NUL character');

  const legsRaw = storage.legs ?? [];
  if (!Array.isArray(legsRaw)) throw new ConfigError('storage.legs', 'must be a list of legs');
  if (legsRaw.length === 0) throw new ConfigError('storage.legs', 'needs at least one leg');
  const legs = legsRaw.map((leg, index) => {
    const key = `storage.legs[${index}]`;
    const entry = objectAt(leg, key);
    rejectUnknownKeys(entry, ['path', 'thin', 'failfastMs', 'connectTimeoutMs', 'connections', 'writeMostly', ...wrapKeys], key);
    const where = stringAt(entry.path, `${key}.path`, undefined, false);
    const remote = isNbdUri(where);
    const spec: LegSpec = { path: remote ? where : path.resolve(baseDir, where), ...parseDeviceWrap(entry, key, baseDir) };
    if (entry.thin !== undefined && entry.thin !== null) {
      if (remote) throw new ConfigError(`${key}.thin`, 'applies to pool files; a remote leg is provisioned by its own server');
      spec.thin = parseThin(entry.thin, `${key}.thin`);
    }
    if (remote) spec.remote = parseRemote(where, entry, key, baseDir);
    else {
      const remoteOnly = ['failfastMs', 'connectTimeoutMs', 'connections'].find((name) => entry[name] !== undefined);
      if (remoteOnly) throw new ConfigError(`${key}.${remoteOnly}`, 'applies to remote legs (nbd://, nbds://, nbd+unix://, nbds+unix://)');
    }
    if (booleanAt(entry.writeMostly, `${key}.writeMostly`, false)) spec.writeMostly = true;
    return spec;
  });
  let logPath: string | undefined;
  let logWrap: DeviceWrap | undefined;
  if (typeof storage.log === 'object' && storage.log !== null && !Array.isArray(storage.log)) {
    // The long form slides crash-toolkit devices under the log: { path, faults, powerCut, writeLog }.
    const entry = storage.log as Record<string, unknown>;
    rejectUnknownKeys(entry, ['path', ...wrapKeys], 'storage.log');
    logPath = path.resolve(baseDir, stringAt(entry.path, 'storage.log.path', undefined, false));
    logWrap = parseDeviceWrap(entry, 'storage.log', baseDir);
  } else if (storage.log !== undefined && storage.log !== null) {
    logPath = path.resolve(baseDir, stringAt(storage.log, 'storage.log', undefined, false));
  }
  const seenLegs = new Map<string, number>();
  legs.forEach((leg, index) => {
    const first = seenLegs.get(leg.path);
    if (first !== undefined) {
      throw new ConfigError(`storage.legs[${index}].path`, `${leg.path} is already storage.legs[${first}].path; each leg needs a file of its own`);
    }
    seenLegs.set(leg.path, index);
  });
  if (logPath !== undefined && seenLegs.has(logPath)) {
    throw new ConfigError('storage.log', `${logPath} is storage.legs[${seenLegs.get(logPath)}].path; the region log needs a file of its own`);
  }
  if (logPath === undefined && legs.length !== 1) {
    throw new ConfigError('storage.legs', `${legs.length} legs but no storage.log: a mirror needs a region log (one leg without a log is a plain export)`);
  }
  if (logPath !== undefined && legs.length < 2) throw new ConfigError('storage.legs', 'a mirror (storage.log is set) needs at least 2 legs');
  if (logPath !== undefined && legs.length > 8) throw new ConfigError('storage.legs', `${legs.length} legs; a mirror has at most 8`);
  const regionSizeBytes = storage.regionSize === undefined ? 1024 * 1024 : parseSize(storage.regionSize, 'storage.regionSize');
  if (regionSizeBytes < 4096 || (regionSizeBytes & (regionSizeBytes - 1)) !== 0 || regionSizeBytes > 1024 ** 3) {
    throw new ConfigError('storage.regionSize', `${regionSizeBytes} must be a power of two from 4KiB to 1GiB`);
  }
  const checkpointGranularityBytes = storage.checkpointGranularity === undefined ? 64 * 1024
    : parseSize(storage.checkpointGranularity, 'storage.checkpointGranularity');
  if (checkpointGranularityBytes < 4096 || (checkpointGranularityBytes & (checkpointGranularityBytes - 1)) !== 0
    || checkpointGranularityBytes > 16 * 1024 * 1024) {
    throw new ConfigError('storage.checkpointGranularity', `${checkpointGranularityBytes} must be a power of two from 4KiB to 16MiB`);
  }
  const readPolicy = storage.readPolicy ?? 'round-robin';
  if (readPolicy !== 'round-robin' && readPolicy !== 'least-pending' && readPolicy !== 'preferred') {
    throw new ConfigError('storage.readPolicy', 'must be round-robin, least-pending or preferred');
  }
  const preferredLeg = storage.preferredLeg === undefined || storage.preferredLeg === null ? undefined
    : integerAt(storage.preferredLeg, 'storage.preferredLeg', 0, 0, legs.length - 1);
  if (readPolicy === 'preferred' && preferredLeg === undefined) {
    throw new ConfigError('storage.preferredLeg', 'is required when storage.readPolicy is preferred');
  }

  const level = log.level ?? 'info';
  if (typeof level !== 'string' || !(logLevels as readonly string[]).includes(level)) {
    throw new ConfigError('log.level', `must be one of ${logLevels.join(', ')}`);
  }
  const unix = listen.unix === undefined || listen.unix === null ? undefined
    : path.resolve(baseDir, stringAt(listen.unix, 'listen.unix', undefined, false));
  const admin = listen.admin === undefined || listen.admin === null ? undefined
    : path.resolve(baseDir, stringAt(listen.admin, 'listen.admin', undefined, false));
  const tcp = listen.tcp === null || listen.tcp === false ? undefined
    : parseHostPort(listen.tcp ?? '127.0.0.1:10809', 'listen.tcp');
  if (tcp === undefined && unix === undefined) throw new ConfigError('listen', 'needs tcp, unix or both');
  const metrics = listen.metrics === undefined || listen.metrics === null || listen.metrics === false ? undefined
    : parseHostPort(listen.metrics, 'listen.metrics');
  return {
    listen: { tcp, unix, admin, metrics, allow: parseAllow(listen.allow) },
    tls: parseTls(root.tls, baseDir),
    export: {
      name: exportName,
      description: stringAt(exported.description, 'export.description', 'nbd-mirror export'),
      readOnly: booleanAt(exported.readOnly, 'export.readOnly', false),
    },
    storage: {
      sizeBytes: storage.sizeBytes === undefined ? 1024 ** 3 : blockMultiple(parseSize(storage.sizeBytes, 'storage.sizeBytes'), 'storage.sizeBytes'),
      legs,
      log: logPath,
      logWrap,
      regionSizeBytes,
      readPolicy: readPolicy as ReadPolicy,
      preferredLeg,
      sweepIntervalMs: integerSetting(storage.sweepIntervalMs, 'storage.sweepIntervalMs'),
      // Left out means the documented default, as every other key; 0 (or null) is the explicit "unlimited".
      resyncBytesPerSecond: storage.resyncRate === undefined ? resyncRateDefaultBytes
        : storage.resyncRate === null || storage.resyncRate === 0 ? 0 : parseSize(storage.resyncRate, 'storage.resyncRate'),
      force: booleanAt(storage.force, 'storage.force', false),
      checkpointGranularityBytes,
    },
    cache: parseCache(root.cache),
    limits: {
      maxConnections: integerSetting(limits.maxConnections, 'limits.maxConnections'),
      negotiatingMax: integerSetting(limits.negotiatingMax, 'limits.negotiatingMax'),
      perAddressMax: integerSetting(limits.perAddressMax, 'limits.perAddressMax'),
      handshakeTimeoutMs: integerSetting(limits.handshakeTimeoutMs, 'limits.handshakeTimeoutMs'),
      inFlightRequestsMax: integerSetting(limits.inFlightRequestsMax, 'limits.inFlightRequestsMax'),
      inFlightBytesMax: limits.inFlightBytesMax === undefined ? 256 * 1024 * 1024
        : parseSize(limits.inFlightBytesMax, 'limits.inFlightBytesMax'),
      pollMaxMicroseconds: integerSetting(limits.pollMaxMicroseconds, 'limits.pollMaxMicroseconds'),
      sendfileReplyBytes: sizeOrZero(limits.sendfileReplyBytes, 'limits.sendfileReplyBytes', 0),
    },
    log: { level: level as Config['log']['level'] },
    crash: parseCrash(root.crash),
  };
}

/** A list, or one comma-separated string (the --allow flag); each entry is checked here. */
function parseAllow(raw: unknown): string[] | undefined {
  if (raw === undefined || raw === null) return undefined;
  const entries = typeof raw === 'string' ? raw.split(',').map((entry) => entry.trim()).filter((entry) => entry !== '') : raw;
  if (!Array.isArray(entries) || entries.some((entry) => typeof entry !== 'string')) {
    throw new ConfigError('listen.allow', 'must be a list of addresses or networks, e.g. [127.0.0.1, 10.0.0.0/8]');
  }
  if (entries.length === 0) throw new ConfigError('listen.allow', 'is empty: no client could connect over TCP (null allows any)');
  try {
    new AllowList(entries as string[]);
  } catch (error) {
    if (error instanceof AllowListError) throw new ConfigError(`listen.allow[${error.index}]`, error.problem);
    throw error;
  }
  return entries as string[];
}

function parseTls(raw: unknown, baseDir: string): TlsSettings {
  if (raw === undefined || raw === null) return { mode: 'off', certificates: undefined, verifyPeer: false, psk: undefined };
  const tls = objectAt(raw, 'tls');
  rejectUnknownKeys(tls, ['mode', 'certificates', 'verifyPeer', 'psk'], 'tls');
  // `mode: false` and `mode: true` (YAML booleans) are taken as off and on.
  const mode = tls.mode === false ? 'off' : tls.mode === true ? 'on' : tls.mode ?? 'off';
  if (typeof mode !== 'string' || !(tlsModes as readonly string[]).includes(mode)) {
    throw new ConfigError('tls.mode', `must be one of ${tlsModes.join(', ')}`);
  }
  const optionalPath = (value: unknown, key: string): string | undefined =>
    value === undefined || value === null ? undefined : path.resolve(baseDir, stringAt(value, key, undefined, false));
  return {
    mode: mode as TlsSettings['mode'],
    certificates: optionalPath(tls.certificates, 'tls.certificates'),
    verifyPeer: booleanAt(tls.verifyPeer, 'tls.verifyPeer', false),
    psk: optionalPath(tls.psk, 'tls.psk'),
  };
}

const wrapKeys = ['faults', 'powerCut', 'writeLog'];

function parseDeviceWrap(entry: Record<string, unknown>, key: string, baseDir: string): DeviceWrap {
  const wrap: DeviceWrap = {};
  if (entry.faults !== undefined && entry.faults !== null) wrap.faults = parseFaultPlan(entry.faults, `${key}.faults`);
  if (entry.powerCut !== undefined && entry.powerCut !== null) {
    const cut = objectAt(entry.powerCut, `${key}.powerCut`);
    rejectUnknownKeys(cut, ['policy', 'seed', 'sectorBytes'], `${key}.powerCut`);
    const policy = cut.policy ?? 'torn';
    if (!cutPolicies.includes(policy as CutPolicy)) {
      throw new ConfigError(`${key}.powerCut.policy`, `must be one of ${cutPolicies.join(', ')}`);
    }
    const sectorBytes = integerAt(cut.sectorBytes, `${key}.powerCut.sectorBytes`, defaultSectorBytes, 512, 65536);
    if (!validSectorBytes(sectorBytes)) throw new ConfigError(`${key}.powerCut.sectorBytes`, 'must be a power of two from 512 to 65536');
    wrap.powerCut = { policy: policy as CutPolicy, seed: integerAt(cut.seed, `${key}.powerCut.seed`, 1, 0, 2 ** 32 - 1), sectorBytes };
  }
  if (entry.writeLog !== undefined && entry.writeLog !== null) {
    wrap.writeLog = path.resolve(baseDir, stringAt(entry.writeLog, `${key}.writeLog`, undefined, false));
  }
  return wrap;
}

function parseCrash(raw: unknown): CrashPlan | undefined {
  if (raw === undefined || raw === null) return undefined;
  const crash = objectAt(raw, 'crash');
  rejectUnknownKeys(crash, ['point'], 'crash');
  if (crash.point === undefined || crash.point === null) return undefined;
  try {
    return parseCrashPlan(stringAt(crash.point, 'crash.point', undefined, false), 'crash.point');
  } catch (error) {
    throw new ConfigError('crash.point', (error as Error).message.replace(/^crash\.point: /, ''));
  }
}

/** A remote leg: its URI checked and its TLS credentials read now (remote-spec.ts), errors named by key. */
function parseRemote(uri: string, entry: Record<string, unknown>, key: string, baseDir: string): RemoteSpec {
  const settings = {
    failfastMs: integerAt(entry.failfastMs, `${key}.failfastMs`, remoteLegDefaults.requestTimeoutMs, 100, 600_000),
    connectTimeoutMs: integerAt(entry.connectTimeoutMs, `${key}.connectTimeoutMs`, remoteLegDefaults.connectTimeoutMs, 100, 600_000),
    connections: integerAt(entry.connections, `${key}.connections`, remoteLegDefaults.connections, 1, remoteConnectionsMax),
  };
  try {
    return remoteSpecFor(uri, settings, baseDir);
  } catch (error) {
    throw new ConfigError(`${key}.path`, (error as Error).message);
  }
}

function parseThin(raw: unknown, key: string): ThinSpec {
  const thin = objectAt(raw, key);
  rejectUnknownKeys(thin, ['poolSize', 'chunkSize', 'lowWater'], key);
  if (thin.poolSize === undefined) throw new ConfigError(`${key}.poolSize`, 'is required (the pool capacity, e.g. 512MiB)');
  const poolBytes = parseSize(thin.poolSize, `${key}.poolSize`);
  const chunkSizeBytes = thin.chunkSize === undefined ? 64 * 1024 : parseSize(thin.chunkSize, `${key}.chunkSize`);
  if (chunkSizeBytes < 4096 || (chunkSizeBytes & (chunkSizeBytes - 1)) !== 0 || chunkSizeBytes > 64 * 1024 * 1024) {
    throw new ConfigError(`${key}.chunkSize`, `${chunkSizeBytes} must be a power of two from 4KiB to 64MiB`);
  }
  if (poolBytes < chunkSizeBytes) throw new ConfigError(`${key}.poolSize`, `${poolBytes} is smaller than one chunk (${chunkSizeBytes})`);
  const lowWaterBytes = sizeOrZero(thin.lowWater, `${key}.lowWater`, Math.floor(poolBytes / 8));
  return { poolBytes, chunkSizeBytes, lowWaterBytes };
}

function parseCache(raw: unknown): CacheConfig | undefined {
  if (raw === undefined || raw === null || raw === false) return undefined;
  const cache = objectAt(raw, 'cache');
  rejectUnknownKeys(cache, ['enabled', 'size', 'dirtyLimit', 'dirtyExpireMs', 'writebackIntervalMs', 'noSpacePolicy', 'noSpaceTimeoutMs',
    'writeAroundSize'], 'cache');
  if (!booleanAt(cache.enabled, 'cache.enabled', true)) return undefined;
  const capacityBytes = cache.size === undefined ? 256 * 1024 * 1024 : parseSize(cache.size, 'cache.size');
  const dirtyLimitBytes = cache.dirtyLimit === undefined ? Math.min(64 * 1024 * 1024, capacityBytes)
    : parseSize(cache.dirtyLimit, 'cache.dirtyLimit');
  if (dirtyLimitBytes > capacityBytes) throw new ConfigError('cache.dirtyLimit', `${dirtyLimitBytes} exceeds cache.size ${capacityBytes}`);
  if (dirtyLimitBytes < 1024 * 1024) throw new ConfigError('cache.dirtyLimit', `${dirtyLimitBytes} is below 1MiB`);
  const noSpacePolicy: unknown = cache.noSpacePolicy ?? 'error';
  if (noSpacePolicy !== 'error' && noSpacePolicy !== 'queue') {
    throw new ConfigError('cache.noSpacePolicy', 'must be error (ENOSPC at once) or queue (wait up to noSpaceTimeoutMs)');
  }
  return {
    capacityBytes,
    dirtyLimitBytes,
    dirtyExpireMs: integerSetting(cache.dirtyExpireMs, 'cache.dirtyExpireMs'),
    writebackIntervalMs: integerSetting(cache.writebackIntervalMs, 'cache.writebackIntervalMs'),
    noSpacePolicy,
    noSpaceTimeoutMs: integerSetting(cache.noSpaceTimeoutMs, 'cache.noSpaceTimeoutMs'),
    writeAroundBytes: sizeOrZero(cache.writeAroundSize, 'cache.writeAroundSize', writeAroundBytesDefault),
  };
}

function parseFaultPlan(raw: unknown, key: string): FaultPlan {
  const plan = objectAt(raw, key);
  rejectUnknownKeys(plan, ['rules', 'latencyMs', 'seed', 'ignoreDurability'], key);
  const rawRules = plan.rules ?? [];
  if (!Array.isArray(rawRules)) throw new ConfigError(`${key}.rules`, 'must be a list of fault rules');
  const rules = rawRules.map((rawRule, index): FaultRule => {
    const ruleKey = `${key}.rules[${index}]`;
    const rule = objectAt(rawRule, ruleKey);
    rejectUnknownKeys(rule, ['ops', 'error', 'afterOps', 'rangeBytes', 'rate', 'sticky', 'armed'], ruleKey);
    const ops = rule.ops ?? faultOps;
    if (!Array.isArray(ops) || ops.length === 0 || !ops.every((op) => faultOps.includes(op as FaultOp))) {
      throw new ConfigError(`${ruleKey}.ops`, `must be a list drawn from ${faultOps.join(', ')}`);
    }
    const error = rule.error ?? 'EIO';
    if (error !== 'EIO' && error !== 'ENOSPC' && error !== 'EINVAL') throw new ConfigError(`${ruleKey}.error`, 'must be EIO, ENOSPC or EINVAL');
    const range = rule.rangeBytes;
    if (range !== undefined && (!Array.isArray(range) || range.length !== 2 || !range.every((value) => Number.isSafeInteger(value)))) {
      throw new ConfigError(`${ruleKey}.rangeBytes`, 'must be [start, end] in bytes');
    }
    if (rule.rate !== undefined && (typeof rule.rate !== 'number' || rule.rate < 0 || rule.rate > 1)) {
      throw new ConfigError(`${ruleKey}.rate`, 'must be a probability between 0 and 1');
    }
    return {
      ops: ops as FaultOp[],
      error,
      afterOps: integerAt(rule.afterOps, `${ruleKey}.afterOps`, 0, 0, Number.MAX_SAFE_INTEGER),
      rangeBytes: range as [number, number] | undefined,
      rate: rule.rate as number | undefined,
      sticky: booleanAt(rule.sticky, `${ruleKey}.sticky`, true),
      armed: booleanAt(rule.armed, `${ruleKey}.armed`, true),
    };
  });
  return {
    rules,
    latencyMs: integerAt(plan.latencyMs, `${key}.latencyMs`, 0, 0, 60_000),
    seed: integerAt(plan.seed, `${key}.seed`, 1, 0, 2 ** 32 - 1),
    ignoreDurability: booleanAt(plan.ignoreDurability, `${key}.ignoreDurability`, false),
  };
}

/** The configuration written on first start of the embedded default. */
/** The embedded default configuration (generated from the settings table). */
export const defaultConfigYaml = defaultConfigText();
