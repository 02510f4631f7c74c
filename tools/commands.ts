import fs from 'node:fs';
import path from 'node:path';
import { type Command, Option } from 'commander';
import cliProgress from 'cli-progress';
import { FileLock } from '../backends/file-lock.js';
import { openLeg } from '../backends/leg-spec.js';
import { ThinLeg } from '../backends/thin-leg.js';
import { parseSize } from '../config/schema.js';
import { registerCrashTest } from './crash-test/command.js';
import { createLogger } from '../cli/logger.js';
import { type ConfigOverrides, loadConfigOrDefault } from '../config/load.js';
import { type Config, ConfigError } from '../config/schema.js';
import { compareRegions, type CompareResult } from '../mirror/compare.js';
import { createMirror } from '../mirror/create.js';
import { readLabel } from '../mirror/leg-label.js';
import { formatUuid, regionsSet } from '../regionlog/format.js';
import { RegionLog } from '../regionlog/region-log.js';
import { adminRequest } from './admin-client.js';
import { formatPool, formatStatus } from './format-status.js';
import type { PoolUsage } from '../backends/thin-leg.js';

interface TargetOptions {
  config?: string;
  leg?: string[];
  log?: string;
  dataDir: string;
  admin?: string;
  json?: boolean;
}

/** The configuration a tool acts on: --config, or the embedded default's data folder (see loadDefaultConfig). */
function targetConfig(options: TargetOptions, overrides: ConfigOverrides = {}): Config {
  return loadConfigOrDefault(options.config, path.resolve(options.dataDir), { legs: options.leg, log: options.log, ...overrides }).config;
}

function adminSocketOf(options: TargetOptions): string | undefined {
  if (options.admin) return path.resolve(options.admin);
  // Files named on the command line are not the configured server's.
  if (options.leg || options.log) return undefined;
  try {
    return targetConfig(options).listen.admin;
  } catch {
    return undefined;
  }
}

async function online(options: TargetOptions): Promise<string | undefined> {
  const socket = adminSocketOf(options);
  if (!socket || !fs.existsSync(socket)) return undefined;
  try {
    await adminRequest(socket, { command: 'status' }, undefined, 5000);
    return socket;
  } catch {
    return undefined;
  }
}

async function requireOnline(options: TargetOptions, what: string): Promise<string> {
  const socket = await online(options);
  if (!socket) {
    throw new ConfigError('admin', `${what} runs against a running server, and none answers on ${adminSocketOf(options) ?? '(no admin socket configured)'}; ` +
      'start it with nbd-mirror serve', 'nbd-mirror');
  }
  return socket;
}

function print(options: TargetOptions, value: unknown, text: () => string): void {
  console.log(options.json ? JSON.stringify(value, (_key, entry: unknown) => (typeof entry === 'bigint' ? entry.toString() : entry), 2) : text());
}

function targetOptions(command: Command): Command {
  return command
    .option('-c, --config <file>', 'configuration file of the mirror')
    .option('-d, --data-dir <dir>', 'data folder of the embedded default', 'data')
    .option('--admin <socket>', 'admin socket of a running server')
    .option('--leg <path...>', 'leg files (instead of the configuration\'s)')
    .option('--log <path>', 'region log file (instead of the configuration\'s)')
    .option('--json', 'print JSON');
}

function progressBar(label: string): { update: (done: number, total: number) => void; stop: () => void } {
  if (!process.stderr.isTTY) return { update: () => {}, stop: () => {} };
  const bar = new cliProgress.SingleBar({ format: `${label} [{bar}] {percentage}% {value}/{total} regions | eta {eta}s`, stream: process.stderr },
    cliProgress.Presets.shades_classic);
  let started = false;
  return {
    update: (done, total) => {
      if (!started) { bar.start(total, 0); started = true; }
      bar.update(done);
    },
    stop: () => { if (started) bar.stop(); },
  };
}

function describeCheck(result: CompareResult): string {
  const mismatches = result.mismatchedRegions.length;
  return `compared legs ${result.legsCompared.join(', ')}: ${result.regionsCompared} regions, ${result.bytesCompared} bytes per leg; ` +
    `mismatch_cnt ${mismatches}${mismatches > 0 ? ` (regions ${result.mismatchedRegions.slice(0, 20).join(', ')}${mismatches > 20 ? ', ...' : ''})` : ''}`;
}

export function registerTools(program: Command): void {
  registerCrashTest(program);
  targetOptions(program.command('create')
    .description('initialise the legs and the region log of a new mirror (from the configuration, or --leg/--log)'))
    .option('--size <size>', 'size of the mirror, e.g. 1GiB')
    .option('--region-size <size>', 'region size, e.g. 1MiB')
    .option('--force', 'overwrite existing files (their contents are lost)')
    .action(async (options: TargetOptions & { size?: string; regionSize?: string; force?: boolean }) => {
      const config = targetConfig(options, { sizeBytes: options.size, regionSize: options.regionSize });
      if (config.storage.log === undefined) throw new ConfigError('storage.log', 'a mirror needs a region log (--log)', 'nbd-mirror create');
      const created = await createMirror({ logPath: config.storage.log, legs: config.storage.legs,
        sizeBytes: config.storage.sizeBytes, regionSizeBytes: config.storage.regionSizeBytes, force: options.force });
      print(options, { mirrorUuid: formatUuid(created.mirrorUuid), legs: created.legUuids.map(formatUuid), initialSync: created.initialSync },
        () => `created mirror ${formatUuid(created.mirrorUuid)}: ${config.storage.legs.length} legs of ${config.storage.sizeBytes} bytes, ` +
          `log ${config.storage.log}, regions of ${config.storage.regionSizeBytes} bytes` +
          (created.initialSync ? '; a block device keeps its old contents, so the first start syncs every region from the source leg' : ''));
    });

  targetOptions(program.command('status').description('legs, their states, dirty and out-of-sync regions, resync progress'))
    .action(async (options: TargetOptions) => {
      const socket = await online(options);
      if (socket) {
        const status = await adminRequest(socket, { command: 'status' });
        print(options, status, () => formatStatus(status as Parameters<typeof formatStatus>[0], 'running server'));
        return;
      }
      const config = targetConfig(options);
      if (!config.storage.log) throw new ConfigError('storage.log', 'not a mirror', 'nbd-mirror status');
      const { state } = RegionLog.inspect(config.storage.log);
      const pools = await Promise.all(config.storage.legs.map(async (leg) => {
        if (!leg.thin || !fs.existsSync(leg.path)) return undefined;
        try {
          const pool = await ThinLeg.open({ path: leg.path, readOnly: true, lowWaterBytes: leg.thin.lowWaterBytes });
          const usage = pool.usage();
          await pool.close();
          return usage;
        } catch {
          return undefined;
        }
      }));
      const offline = {
        mirrorUuid: formatUuid(state.mirrorUuid), sizeBytes: state.deviceSizeBytes, regionSizeBytes: state.regionSizeBytes,
        regionCount: state.regionCount, cleanShutdown: state.cleanShutdown, bitsSet: regionsSet(state.dirty, state.regionCount).length,
        inUse: FileLock.holder(config.storage.log) === 'exclusive',
        legs: state.legs.map((record, slot) => {
          const legPath = config.storage.legs[slot]?.path;
          const thin = config.storage.legs[slot]?.thin !== undefined;
          const label = legPath && fs.existsSync(legPath) ? readLabel(legPath, thin) : undefined;
          return { slot, path: legPath, uuid: formatUuid(record.uuid), state: record.state, rebuildMode: record.rebuildMode,
            labelEvents: label?.label?.events.toString(), logEvents: record.events.toString(), labelProblem: label?.problem,
            pool: pools[slot] };
        }),
      };
      print(options, offline, () => formatStatus(offline, 'offline, from the files'));
    });

  targetOptions(program.command('check').description('compare the legs region by region (mismatch count, like md check)'))
    .option('--repair', 'resync mismatched regions from the source leg (needs a running server)')
    .action(async (options: TargetOptions & { repair?: boolean }) => {
      const bar = progressBar('check');
      let result: CompareResult;
      const socket = await online(options);
      if (socket) {
        result = await adminRequest(socket, { command: 'check', repair: options.repair }, bar.update) as CompareResult;
      } else {
        if (options.repair) await requireOnline(options, 'repair');
        result = await offlineCheck(targetConfig(options), bar.update);
      }
      bar.stop();
      print(options, result, () => describeCheck(result));
      if (result.mismatchedRegions.length > 0 && !options.repair) process.exitCode = 1;
    });

  targetOptions(program.command('repair').description('check, and resync every mismatched region from the source leg'))
    .action(async (options: TargetOptions) => {
      const socket = await requireOnline(options, 'repair');
      const bar = progressBar('repair');
      const result = await adminRequest(socket, { command: 'repair' }, bar.update) as CompareResult;
      bar.stop();
      print(options, result, () => `${describeCheck(result)}; mismatched regions queued for resync`);
    });

  targetOptions(program.command('resync').description('resync every region from the source leg'))
    .option('--wait', 'wait until the resync has finished')
    .action(async (options: TargetOptions & { wait?: boolean }) => {
      const socket = await requireOnline(options, 'resync');
      const message = await adminRequest(socket, { command: 'resync' });
      if (options.wait) await adminRequest(socket, { command: 'wait-resync' });
      print(options, { message }, () => String(message));
    });

  targetOptions(program.command('re-add').description('bring a faulty leg back; only regions written meanwhile are resynced'))
    .argument('<slot>', 'leg slot number', (value) => Number(value))
    .option('--path <path>', 'the leg file, if it moved')
    .option('--force', 'take the leg even if its label does not match, and rebuild it fully')
    .action(async (slot: number, options: TargetOptions & { path?: string; force?: boolean }) => {
      const socket = await requireOnline(options, 're-add');
      const message = await adminRequest(socket, { command: 're-add', slot, path: options.path && path.resolve(options.path), force: options.force });
      print(options, { message }, () => String(message));
    });

  targetOptions(program.command('replace').description('put a new, empty leg in a slot and rebuild it online'))
    .argument('<slot>', 'leg slot number', (value) => Number(value))
    .argument('<path>', 'new leg file (created)')
    .option('--force', 'overwrite the new leg file if it exists')
    .action(async (slot: number, legPath: string, options: TargetOptions & { force?: boolean }) => {
      const socket = await requireOnline(options, 'replace');
      const message = await adminRequest(socket, { command: 'replace', slot, path: path.resolve(legPath), force: options.force });
      print(options, { message }, () => String(message));
    });

  const pool = program.command('pool').description('thin-provisioned legs');
  targetOptions(pool.command('grow').description('raise a thin leg\'s pool capacity (online through the admin socket, or offline)'))
    .argument('[slot]', 'leg slot number (0 for a plain export)', (value) => Number(value), 0)
    .option('--to <size>', 'new pool capacity, e.g. 2GiB')
    .option('--by <size>', 'capacity to add, e.g. 512MiB')
    .action(async (slot: number, options: TargetOptions & { to?: string; by?: string }) => {
      if ((options.to === undefined) === (options.by === undefined)) throw new ConfigError('pool grow', 'give exactly one of --to or --by', 'nbd-mirror');
      const size = { toBytes: options.to === undefined ? undefined : parseSize(options.to, '--to'),
        byBytes: options.by === undefined ? undefined : parseSize(options.by, '--by') };
      const socket = await online(options);
      let usage: PoolUsage;
      if (socket) {
        usage = await adminRequest(socket, { command: 'pool-grow', slot, ...size }) as PoolUsage;
      } else {
        // No server holds the pool: grow the file directly.
        const leg = targetConfig(options).storage.legs[slot];
        if (!leg) throw new ConfigError('storage.legs', `no leg slot ${slot}`, 'nbd-mirror pool grow');
        if (!leg.thin) throw new ConfigError(`storage.legs[${slot}]`, 'is not a thin leg', 'nbd-mirror pool grow');
        const thin = await ThinLeg.open({ path: leg.path });
        try {
          usage = await thin.grow(size);
        } finally {
          await thin.close();
        }
      }
      print(options, usage, () => `leg ${slot}: ${formatPool(usage)}`);
    });

  program.command('dump-log')
    .description('print both copies of a region log and its dirty regions')
    .argument('<log>', 'region log file')
    .addOption(new Option('--json', 'print JSON'))
    .action((logPath: string, options: { json?: boolean }) => {
      const { state, copies } = RegionLog.inspect(logPath);
      const dirty = regionsSet(state.dirty, state.regionCount);
      const dump = {
        copies: copies.map((copy, index) => ({ copy: index, sequence: copy.sequence?.toString(), error: copy.error })),
        mirrorUuid: formatUuid(state.mirrorUuid), sequence: state.sequence.toString(), sizeBytes: state.deviceSizeBytes,
        regionSizeBytes: state.regionSizeBytes, regionCount: state.regionCount, cleanShutdown: state.cleanShutdown,
        labelUpdatePending: state.labelUpdatePending, events: state.eventsCurrent.toString(),
        legs: state.legs.map((record, slot) => ({ slot, uuid: formatUuid(record.uuid), state: record.state, rebuildMode: record.rebuildMode,
          events: record.events.toString(), rebuildCheckpointBytes: record.rebuildCheckpointBytes,
          failedAt: record.failedAtMs ? new Date(record.failedAtMs).toISOString() : undefined })),
        dirtyRegions: dirty,
      };
      console.log(options.json ? JSON.stringify(dump, null, 2) : [
        `region log ${logPath}`,
        ...dump.copies.map((copy) => `  copy ${copy.copy}: ${copy.error?.replace(/^copy \d+: /, '') ?? `sequence ${copy.sequence}`}`),
        `  mirror ${dump.mirrorUuid}, newest sequence ${dump.sequence}, events ${dump.events}`,
        `  ${dump.sizeBytes} bytes in ${dump.regionCount} regions of ${dump.regionSizeBytes} bytes; clean shutdown: ${dump.cleanShutdown}`,
        ...dump.legs.map((leg) => `  leg ${leg.slot}: ${leg.uuid} ${leg.state}${leg.rebuildMode !== 'none' ? ` (${leg.rebuildMode}, at ${leg.rebuildCheckpointBytes})` : ''} events ${leg.events}${leg.failedAt ? ` failed ${leg.failedAt}` : ''}`),
        `  dirty regions (${dirty.length}): ${dirty.slice(0, 64).join(' ')}${dirty.length > 64 ? ' ...' : ''}`,
      ].join('\n'));
    });
}

/** Compares the leg files directly; the server must not be running (nothing locks the regions). */
async function offlineCheck(config: Config, onProgress: (done: number, total: number) => void): Promise<CompareResult> {
  if (!config.storage.log) throw new ConfigError('storage.log', 'not a mirror', 'nbd-mirror check');
  const { state } = RegionLog.inspect(config.storage.log);
  const slots = state.legs.flatMap((record, slot) => (record.state === 'in_sync' ? [slot] : []));
  const logger = createLogger('silent');
  const legs = await Promise.all(slots.map(async (slot) => ({
    slot, device: (await openLeg({ path: config.storage.legs[slot].path, thin: config.storage.legs[slot].thin }, state.deviceSizeBytes, logger, { readOnly: true })).device,
  })));
  try {
    return await compareRegions({ sizeBytes: state.deviceSizeBytes, regionSizeBytes: state.regionSizeBytes, legs }, onProgress);
  } finally {
    await Promise.all(legs.map((leg) => leg.device.close()));
  }
}


