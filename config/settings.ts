import { sweepIntervalBounds } from '../mirror/mirror-settings.js';
import { negotiatingMaxBounds, perAddressMaxBounds } from '../nbd/admission.js';
import { handshakeTimeoutBounds, inFlightRequestsBounds } from '../nbd/connection-options.js';
import { pollMaxBounds } from '../nbd/input-poll.js';
import { maxConnectionsBounds } from '../nbd/server.js';
import { tlsModes } from '../nbd/tls-credentials.js';
import { dirtyExpireBounds, noSpaceTimeoutBounds, writebackIntervalBounds } from '../pagecache/page-cache.js';

/** Settings given on the command line; they override the file, key by key. */
export interface ConfigOverrides {
  tcp?: string | null;
  unix?: string | null;
  exportName?: string;
  description?: string;
  readOnly?: boolean;
  legs?: string[];
  log?: string | null;
  admin?: string | null;
  metrics?: string | null;
  regionSize?: string;
  sweepIntervalMs?: number;
  force?: boolean;
  /** Turns the write-back cache on or off, keeping the file's other cache settings. */
  cache?: boolean;
  sizeBytes?: string;
  maxConnections?: number;
  negotiatingMax?: number;
  perAddressMax?: number;
  allow?: string;
  handshakeTimeoutMs?: number;
  tlsMode?: string;
  tlsCertificates?: string;
  tlsVerifyPeer?: boolean;
  tlsPsk?: string;
  pollMaxMicroseconds?: number;
  logLevel?: string;
  /** point[@hit][:kill|power-cut] (crash-injection testing). */
  crashPoint?: string;
}

/** An integer setting's range and default, exported by the module that enforces it. */
export interface Bounds {
  min: number;
  max: number;
  default: number;
}

export interface Setting {
  /** Where it lives in the YAML file. */
  key: string;
  /** The command-line flag that sets it, in commander's syntax, with its help. */
  flag?: { spec: string; help: string; integer?: boolean; choices?: readonly string[] };
  /** The ConfigOverrides field the flag fills. */
  override?: keyof ConfigOverrides;
  /** A path given on the command line is relative to the working directory, not to the file. */
  path?: boolean;
  bounds?: Bounds;
  /** Its line in the default configuration (the value defaults to bounds.default). */
  yaml?: { value?: string; comment?: string };
}

export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/**
 * Every scalar setting, once: its key, its flag and override, its bounds
 * (owned by the module that enforces them) and its line in the default
 * configuration. The flags of `serve`, the mapping from a bad value back to
 * the flag that gave it, the overrides and the default YAML all come from
 * here. Settings with structure (legs, thin pools, fault plans) are parsed
 * in schema.ts.
 */
export const settings: readonly Setting[] = [
  { key: 'listen.tcp', override: 'tcp', yaml: { value: '127.0.0.1:10809', comment: 'null to disable TCP' },
    flag: { spec: '-l, --listen <host:port>', help: 'TCP address to listen on (a port alone listens on 127.0.0.1)' } },
  { key: 'listen.unix', override: 'unix', path: true, yaml: { value: 'nbd.sock', comment: 'unix socket, relative to this file; null to disable' },
    flag: { spec: '-u, --unix <path>', help: 'unix socket to listen on' } },
  { key: 'listen.admin', override: 'admin', path: true,
    yaml: { value: 'admin.sock', comment: 'local admin socket for nbd-mirror status/re-add/replace/check' },
    flag: { spec: '--admin <path>', help: 'admin socket for nbd-mirror status/re-add/replace/check' } },
  { key: 'listen.metrics', override: 'metrics', yaml: { value: 'null', comment: 'Prometheus endpoint, e.g. 127.0.0.1:9710 (GET /metrics); null: off' },
    flag: { spec: '--metrics <host:port>', help: 'serve Prometheus metrics at http://HOST:PORT/metrics' } },
  { key: 'listen.allow', override: 'allow',
    yaml: { value: 'null', comment: 'TCP clients allowed, e.g. [127.0.0.1, 10.0.0.0/8, "::1"]; null: any' },
    flag: { spec: '--allow <list>', help: 'comma-separated client addresses or networks allowed over TCP, e.g. 10.0.0.0/8,::1' } },
  { key: 'tls.mode', override: 'tlsMode', yaml: { value: 'off', comment: 'off, on (offer STARTTLS) or require (refuse plaintext)' },
    flag: { spec: '--tls <mode>', help: 'TLS: off, on (offered) or require', choices: tlsModes } },
  { key: 'tls.certificates', override: 'tlsCertificates', path: true,
    yaml: { value: 'null', comment: 'x509 folder: ca-cert.pem, server-cert.pem, server-key.pem (as qemu and nbdkit)' },
    flag: { spec: '--tls-certificates <dir>', help: 'x509 folder with ca-cert.pem, server-cert.pem, server-key.pem' } },
  { key: 'tls.verifyPeer', override: 'tlsVerifyPeer', yaml: { value: 'false', comment: 'x509: clients need a certificate signed by ca-cert.pem' },
    flag: { spec: '--tls-verify-peer', help: 'x509: require a client certificate signed by ca-cert.pem' } },
  { key: 'tls.psk', override: 'tlsPsk', path: true, yaml: { value: 'null', comment: 'PSK file of username:hexkey lines (psktool), instead of x509' },
    flag: { spec: '--tls-psk <file>', help: 'pre-shared keys file (psktool format), instead of certificates' } },
  { key: 'export.name', override: 'exportName', yaml: { value: 'disk' }, flag: { spec: '-n, --export-name <name>', help: 'export name' } },
  { key: 'export.description', override: 'description', yaml: { value: 'nbd-mirror default export' },
    flag: { spec: '--description <text>', help: 'export description' } },
  { key: 'export.readOnly', override: 'readOnly', yaml: { value: 'false' }, flag: { spec: '-r, --read-only', help: 'serve the export read-only' } },
  { key: 'storage.sizeBytes', override: 'sizeBytes', yaml: { value: '1GiB', comment: 'size of the mirror created on first start' },
    flag: { spec: '--size <size>', help: 'size of leg files created on first start, e.g. 1GiB' } },
  { key: 'storage.log', override: 'log', path: true, yaml: { value: 'mirror.log', comment: 'dirty-region log; the legs below form a RAID1 mirror' },
    flag: { spec: '--log <path>', help: 'region log: the legs form a mirror (created on first start if nothing exists yet)' } },
  { key: 'storage.regionSize', override: 'regionSize', yaml: { value: '1MiB', comment: 'resync granularity' },
    flag: { spec: '--region-size <size>', help: 'region size for a mirror created on first start, e.g. 1MiB' } },
  { key: 'storage.readPolicy', yaml: { value: 'round-robin', comment: 'round-robin, least-pending or preferred (with preferredLeg)' } },
  { key: 'storage.preferredLeg' },
  { key: 'storage.sweepIntervalMs', override: 'sweepIntervalMs', bounds: sweepIntervalBounds,
    yaml: { comment: 'how often quiet regions are synced and their bits cleared' },
    flag: { spec: '--sweep-interval-ms <n>', help: 'how often the sweeper clears quiet regions', integer: true } },
  { key: 'storage.resyncRate', yaml: { value: '256MiB', comment: 'per second; 0 for unlimited' } },
  { key: 'storage.checkpointGranularity' },
  { key: 'storage.force', override: 'force',
    flag: { spec: '--force', help: 'take in legs that are stale, foreign or unlabelled, and rebuild them fully' } },
  { key: 'cache.enabled', yaml: { value: 'true' } },
  { key: 'cache.size', yaml: { value: '256MiB', comment: 'memory for cached pages, clean and dirty' } },
  { key: 'cache.dirtyLimit', yaml: { value: '64MiB', comment: 'writers wait for writeback above this' } },
  { key: 'cache.dirtyExpireMs', bounds: dirtyExpireBounds, yaml: { comment: 'dirty pages older than this are written back in the background' } },
  { key: 'cache.writebackIntervalMs', bounds: writebackIntervalBounds },
  { key: 'cache.noSpacePolicy', yaml: { value: 'error', comment: 'out of space with the dirty limit reached: error (ENOSPC) or queue' } },
  { key: 'cache.noSpaceTimeoutMs', bounds: noSpaceTimeoutBounds, yaml: { comment: 'how long queue waits for space before ENOSPC' } },
  { key: 'cache.writeAroundSize', yaml: { value: '64KiB', comment: 'writes this large go straight to the legs, smaller ones when the cache is busy and would gain nothing; 0: cache every write' } },
  { key: 'limits.maxConnections', override: 'maxConnections', bounds: maxConnectionsBounds, yaml: {},
    flag: { spec: '--max-connections <n>', help: 'maximum simultaneous clients', integer: true } },
  { key: 'limits.negotiatingMax', override: 'negotiatingMax', bounds: negotiatingMaxBounds,
    yaml: { comment: 'clients still negotiating at once; past it the oldest is dropped' },
    flag: { spec: '--negotiating-max <n>', help: 'clients still negotiating at once (past it the oldest is dropped)', integer: true } },
  { key: 'limits.perAddressMax', override: 'perAddressMax', bounds: perAddressMaxBounds, yaml: { comment: 'TCP connections from one address' },
    flag: { spec: '--per-address-max <n>', help: 'TCP connections from one client address at once', integer: true } },
  { key: 'limits.handshakeTimeoutMs', override: 'handshakeTimeoutMs', bounds: handshakeTimeoutBounds, yaml: {},
    flag: { spec: '--handshake-timeout-ms <n>', help: 'disconnect clients that do not finish negotiating', integer: true } },
  { key: 'limits.inFlightRequestsMax', bounds: inFlightRequestsBounds, yaml: {} },
  { key: 'limits.inFlightBytesMax' },
  { key: 'limits.sendfileReplyBytes' },
  { key: 'limits.pollMaxMicroseconds', override: 'pollMaxMicroseconds', bounds: pollMaxBounds,
    yaml: { comment: 'after input, poll up to this long before sleeping (adaptive, like QEMU\'s poll-max-ns; 0: never)' },
    flag: { spec: '--poll-max-us <n>', help: 'after input, poll up to this many microseconds before sleeping (adaptive; 0: never)', integer: true } },
  { key: 'log.level', override: 'logLevel', yaml: { value: 'info' }, flag: { spec: '--log-level <level>', help: 'log level', choices: logLevels } },
  { key: 'crash.point', override: 'crashPoint',
    flag: { spec: '--crash-point <point>', help: 'crash-injection testing: point[@hit][+ms][:kill|power-cut] ends the process at the hit-th time the point is reached at least ms after the start' } },
];

const byKey = new Map(settings.map((setting) => [setting.key, setting]));

/** The bounds of an integer setting (a key without them is a bug in the table). */
export function boundsOf(key: string): Bounds {
  const bounds = byKey.get(key)?.bounds;
  if (bounds === undefined) throw new Error(`settings table: ${key} has no bounds`);
  return bounds;
}

/** The long flag of a setting, e.g. --max-connections. */
export function flagName(setting: Setting): string | undefined {
  return setting.flag === undefined ? undefined : /--[a-z-]+/.exec(setting.flag.spec)?.[0];
}

/** Lines the default configuration adds after a key's own line (the legs, under storage). */
const yamlAfter: Record<string, string[]> = {
  'storage.resyncRate': [
    '  legs:',
    '    - path: leg0.img',
    '    - path: leg1.img',
    '    # A thin-provisioned leg instead (pool grows online with nbd-mirror pool grow):',
    '    # - path: leg1.thin',
    '    #   thin: { poolSize: 512MiB, chunkSize: 64KiB, lowWater: 64MiB }',
    '    # Or a replica on another machine, an NBD export (docs/remote-legs.md):',
    '    # - path: "nbds://replica.example/disk?tls-certificates=/etc/nbd-mirror/client"',
    '    #   failfastMs: 10000',
    '    #   connections: 4          # when the remote advertises multi-conn',
    '    #   writeMostly: true',
  ],
};

const sectionComments: Record<string, string> = {
  cache: 'write-back page cache; clients\' flushes make writes durable',
};

function withComment(line: string, comment: string | undefined): string {
  return comment === undefined ? line : `${line.padEnd(26)}  # ${comment}`;
}

/** The embedded default configuration, written on first start. */
export function defaultConfigText(): string {
  const lines = ['# nbd-mirror configuration (created on first start; edit and restart).'];
  let section = '';
  for (const setting of settings) {
    if (setting.yaml === undefined) continue;
    const [name, key] = setting.key.split('.');
    if (name !== section) {
      section = name;
      lines.push(withComment(`${name}:`, sectionComments[name]));
    }
    const value = setting.yaml.value ?? String(setting.bounds!.default);
    lines.push(withComment(`  ${key}: ${value}`, setting.yaml.comment));
    lines.push(...(yamlAfter[setting.key] ?? []));
  }
  return `${lines.join('\n')}\n`;
}
