import type { CheckpointInfo } from '../cbt/checkpoint-store.js';
import type { BackupViewStatus } from '../cbt/backup-view.js';
import { BackupPullError, backupPull, type PullResult } from './backup-pull.js';
import path from 'node:path';
import type { Command } from 'commander';
import { openLeg } from '../backends/leg-spec.js';
import { isNbdUri } from '../backends/nbd-client/nbd-uri.js';
import { ThinLeg, type PoolUsage } from '../backends/thin-leg.js';
import { createLogger } from '../observe/logger.js';
import { type Config, ConfigError, parseSize } from '../config/schema.js';
import { compareRegions, type CompareResult } from '../mirror/compare.js';
import { createMirror } from '../mirror/create.js';
import { takeoverMirror } from '../mirror/takeover.js';
import { formatUuid, regionsSet } from '../regionlog/format.js';
import { RegionLog } from '../regionlog/region-log.js';
import { adminRequest } from './admin-client.js';
import { registerCrashTest } from './crash-test/command.js';
import { registerEvents } from './events-command.js';
import { formatPool, formatStatus } from './format-status.js';
import { progressBar } from './progress.js';
import { exitCodeFor, filesStatus, offlineCheckpoints, type StatusReport } from '../observe/status-view.js';
import { online, print, requireOnline, targetConfig, targetOptions, type TargetOptions } from './target.js';
import { exitNoSuchMirror, ToolError } from './tool-error.js';

function describeCheck(result: CompareResult): string {
  if (result.legsCompared.length < 2) {
    return `nothing compared: only leg ${result.legsCompared.join(', ') || '(none)'} is in sync, and a check needs two; ` +
      'no mismatch count (re-add or replace the other legs first)';
  }
  const mismatches = result.mismatchedRegions.length;
  return `compared legs ${result.legsCompared.join(', ')}: ${result.regionsCompared} regions, ${result.bytesCompared} bytes per leg; ` +
    `mismatch_cnt ${mismatches}${mismatches > 0 ? ` (regions ${result.mismatchedRegions.slice(0, 20).join(', ')}${mismatches > 20 ? ', ...' : ''})` : ''}`;
}

/** An admin command that starts work, then with --wait follows it to the end and prints the final state. */
async function runAndWait(options: TargetOptions & { wait?: boolean }, what: string, request: Parameters<typeof adminRequest>[1],
  label: string): Promise<void> {
  const socket = await requireOnline(options, what);
  const message = await adminRequest(socket, request);
  if (!options.wait) {
    print(options, { message }, () => String(message));
    return;
  }
  if (!options.json) console.log(String(message));
  await followToEnd(socket, options, label, message);
}

/** Follows the work the server is doing to its end (wait-resync), then prints the final state and sets the exit code. */
async function followToEnd(socket: string, options: TargetOptions, label: string, started: unknown): Promise<void> {
  const bar = progressBar(label);
  const waited = await adminRequest(socket, { command: 'wait-resync' }, bar.update) as { waited: { finished: boolean; problem?: string } };
  bar.stop();
  const report = await adminRequest(socket, { command: 'report' }) as StatusReport;
  print(options, { message: started, waited: waited.waited, status: report }, () =>
    `${waited.waited.finished ? `${label} finished` : `stopped waiting: ${waited.waited.problem}`}\n${formatStatus(report)}`);
  process.exitCode = waited.waited.finished ? exitCodeFor(report.health) : 1;
}

/** A leg named on the command line: a file relative to here, or a remote leg's NBD URI as given. */
function legLocation(value: string): string {
  return isNbdUri(value) ? value : path.resolve(value);
}

function slotArgument(value: string): number {
  const slot = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(slot)) throw new ToolError(`"${value}" is not a leg slot number (0, 1, ...)`);
  return slot;
}

export function registerTools(program: Command): void {
  registerCrashTest(program);
  targetOptions(program.command('create')
    .description('initialise the legs and the region log of a new mirror (from the configuration, or --leg/--log)'))
    .option('--size <size>', 'size of the mirror, e.g. 1GiB')
    .option('--region-size <size>', 'region size, e.g. 1MiB')
    .option('--force', 'overwrite existing files (their contents are lost)')
    .action(async (options: TargetOptions & { size?: string; regionSize?: string; force?: boolean }) => {
      // create is the one tool that writes the embedded default's folder, as serve's first start does.
      const config = targetConfig(options, { sizeBytes: options.size, regionSize: options.regionSize }, { createDataDir: true });
      if (config.storage.log === undefined) throw new ToolError('a mirror needs a region log (--log, or storage.log in the configuration)');
      const created = await createMirror({ logPath: config.storage.log, legs: config.storage.legs,
        sizeBytes: config.storage.sizeBytes, regionSizeBytes: config.storage.regionSizeBytes, force: options.force });
      print(options, { mirrorUuid: formatUuid(created.mirrorUuid), legs: created.legUuids.map(formatUuid), initialSync: created.initialSync },
        () => `created mirror ${formatUuid(created.mirrorUuid)}: ${config.storage.legs.length} legs of ${config.storage.sizeBytes} bytes, ` +
          `log ${config.storage.log}, regions of ${config.storage.regionSizeBytes} bytes` +
          (created.initialSync ? `; ${created.keptContents.join(' and ')} ${created.keptContents.length > 1 ? 'keep' : 'keeps'} ` +
            'its old contents, so the first start syncs every region from the source leg' : ''));
    });

  targetOptions(program.command('takeover')
    .description('the primary\'s host is lost with its region log: write a new log from the surviving legs\' labels, ' +
      'so this host serves them degraded (list every slot; lost legs by their old paths or URIs)'))
    .option('--force', 'overwrite an existing log file (never the log of a running mirror)')
    .action(async (options: TargetOptions & { force?: boolean }) => {
      const config = targetConfig(options);
      if (config.storage.log === undefined) throw new ToolError('a takeover writes a region log: give --log, or storage.log in the configuration');
      const result = await takeoverMirror({ logPath: config.storage.log, legs: config.storage.legs,
        regionSizeBytes: config.storage.regionSizeBytes, force: options.force });
      print(options, { mirrorUuid: formatUuid(result.mirrorUuid), events: result.events.toString(), survivors: result.survivors,
        stale: result.stale, emptied: result.emptied }, () => [
        `took over mirror ${formatUuid(result.mirrorUuid)} in ${config.storage.log}: leg ${result.survivors.join(', ')} in sync ` +
          `(events ${result.events})`,
        ...result.stale.map((slot) => `leg ${slot}: an older copy, faulty (re-add copies every region)`),
        ...result.emptied.map(({ slot, why }) => `leg ${slot}: empty, ${why}; fill it with nbd-mirror replace ${slot} PATH-OR-URI ` +
          '(a returning old primary\'s leg needs --force: what only it held is discarded)'),
        'start the server with this configuration; it runs degraded until the empty slots are replaced',
      ].join('\n'));
    });

  targetOptions(program.command('status').description('legs, their states, dirty and out-of-sync regions, resync progress; ' +
    'exit 0 optimal, 1 degraded or resyncing, 2 failed, 4 no such mirror or server unreachable'))
    .action(async (options: TargetOptions) => {
      let report: StatusReport;
      try {
        report = await statusReport(options);
      } catch (error) {
        throw error instanceof ToolError ? error : new ToolError((error as Error).message, exitNoSuchMirror);
      }
      print(options, report, () => formatStatus(report));
      process.exitCode = exitCodeFor(report.health);
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
        result = await offlineCheck(targetConfig(options), (done, total) => bar.update({ done, total }));
      }
      bar.stop();
      print(options, { ...result, compared: result.legsCompared.length >= 2 }, () => describeCheck(result));
      if (result.legsCompared.length < 2) process.exitCode = 2;
      else if (result.mismatchedRegions.length > 0 && !options.repair) process.exitCode = 1;
    });

  targetOptions(program.command('repair').description('check, and resync every mismatched region from the source leg'))
    .option('--wait', 'wait until the mismatched regions are resynced')
    .action(async (options: TargetOptions & { wait?: boolean }) => {
      const socket = await requireOnline(options, 'repair');
      const bar = progressBar('repair');
      const result = await adminRequest(socket, { command: 'repair' }, bar.update) as CompareResult;
      bar.stop();
      const source = result.legsCompared[0];
      const text = result.legsCompared.length < 2 ? describeCheck(result)
        : `${describeCheck(result)}${result.mismatchedRegions.length > 0 ? `; mismatched regions queued for resync from leg ${source} (the source leg's bytes win)` : ''}`;
      if (options.wait && result.mismatchedRegions.length > 0) {
        if (!options.json) console.log(text);
        await followToEnd(socket, options, 'repair', result);
        return;
      }
      print(options, result, () => text);
    });

  targetOptions(program.command('resync').description('resync every region from the source leg'))
    .option('--wait', 'wait until the resync has finished, then print the final state (a progress bar on a terminal)')
    .action((options: TargetOptions & { wait?: boolean }) => runAndWait(options, 'resync', { command: 'resync' }, 'resync'));

  const checkpoint = program.command('checkpoint').description('checkpoints for incremental backup: the blocks changed since ' +
    'each are served as the NBD meta context qemu:dirty-bitmap:NAME, and survive any crash (docs/changed-blocks.md)');
  targetOptions(checkpoint.command('create').description('create a checkpoint of the running server; returns once it is durable'))
    .argument('<name>', 'letters, digits, ".", "_" and "-"')
    .action(async (name: string, options: TargetOptions) => {
      const socket = await requireOnline(options, 'checkpoint create');
      const created = await adminRequest(socket, { command: 'checkpoint-create', name }) as CheckpointInfo;
      print(options, created, () => `checkpoint ${created.name} created at ${created.createdAt}; the blocks changed since are ` +
        `qemu:dirty-bitmap:${created.name} (granularity ${created.granularityBytes} bytes)`);
    });
  targetOptions(checkpoint.command('list').description('the checkpoints and the bytes changed since each (offline too)'))
    .action(async (options: TargetOptions) => {
      const socket = await online(options);
      let list: CheckpointInfo[];
      if (socket) list = await adminRequest(socket, { command: 'checkpoint-list' }) as CheckpointInfo[];
      else {
        const config = targetConfig(options);
        if (!config.storage.log) throw new ToolError('checkpoints need a mirror: the configuration has no storage.log');
        list = offlineCheckpoints(config.storage.log, RegionLog.inspect(config.storage.log).state);
      }
      print(options, list, () => (list.length === 0 ? 'no checkpoints' : list.map((info) =>
        `${info.name.padEnd(24)} created ${info.createdAt}   changed since: ${info.dirtyBytes} bytes`).join('\n')));
    });
  targetOptions(checkpoint.command('remove').description('remove a checkpoint of the running server; returns once it is durable'))
    .argument('<name>')
    .action(async (name: string, options: TargetOptions) => {
      const socket = await requireOnline(options, 'checkpoint remove');
      const message = await adminRequest(socket, { command: 'checkpoint-remove', name });
      print(options, { message }, () => String(message));
    });

  const backup = program.command('backup').description('pull-mode backup (docs/changed-blocks.md)');
  targetOptions(backup.command('start').description('create checkpoint NAME and serve the export as it is at this instant, read-only, ' +
    'as EXPORT@NAME (copy-before-write into scratch space), while the live export keeps taking writes'))
    .argument('<name>', 'the new checkpoint and backup')
    .option('--since <checkpoint>', 'EXPORT@NAME also offers qemu:dirty-bitmap:CHECKPOINT: the blocks changed between it and NAME')
    .option('--scratch-size <size>', 'space for the old bytes of blocks written while the backup runs (default 1GiB); when it runs ' +
      'out the backup fails, never the export')
    .action(async (name: string, options: TargetOptions & { since?: string; scratchSize?: string }) => {
      const socket = await requireOnline(options, 'backup start');
      const scratchBytes = options.scratchSize === undefined ? undefined : parseSizeArgument(options.scratchSize, '--scratch-size');
      const started = await adminRequest(socket, { command: 'backup-start', name, since: options.since, scratchBytes }) as BackupViewStatus;
      print(options, started, () => `backup ${name} started: the export as of ${started.startedAt} is served read-only as EXPORT@${name}` +
        `${started.since ? `, with qemu:dirty-bitmap:${started.since} (changed since ${started.since})` : ''}; ` +
        `scratch space ${started.scratchLimitBytes} bytes. Pull it, then: nbd-mirror backup stop ${name}`);
    });
  targetOptions(backup.command('stop').description('end backup NAME\'s view and free its scratch space; checkpoint NAME stays'))
    .argument('<name>')
    .action(async (name: string, options: TargetOptions) => {
      const socket = await requireOnline(options, 'backup stop');
      const message = await adminRequest(socket, { command: 'backup-stop', name });
      print(options, { message }, () => String(message));
    });
  backup
    .command('pull').description('copy an export into FILE: all of its allocated extents, or with --since only the blocks changed ' +
      'since that checkpoint over the image a previous pull made; works with any server offering qemu:dirty-bitmap:NAME')
    .argument('<uri>', 'the export, as an NBD URI (nbd://host:port/name, nbd+unix:///name?socket=PATH, nbds://...)')
    .requiredOption('--to <file>', 'the image file')
    .option('--since <checkpoint>', 'copy only the blocks changed since this checkpoint (qemu:dirty-bitmap:CHECKPOINT)')
    .option('--force', 'a full pull replaces an existing FILE')
    .option('--json', 'print the result as JSON')
    .action(async (uri: string, options: { to: string; since?: string; force?: boolean; json?: boolean }) => {
      const bar = progressBar(options.since === undefined ? 'pull' : `pull since ${options.since}`, 'MiB');
      let result: PullResult;
      try {
        result = await backupPull(uri, options.to, { since: options.since, force: options.force,
          onProgress: (done, total, copied) => bar.update({ done: Math.floor(done / 2 ** 20), total: Math.ceil(total / 2 ** 20), bytes: copied }) });
      } catch (error) {
        throw error instanceof BackupPullError ? new ToolError(error.message) : error;
      } finally {
        bar.stop();
      }
      print(options, result, () => `${result.mode} pull: ${result.copiedBytes} bytes in ${result.extents} extents copied into ` +
        `${options.to} (${result.sizeBytes} bytes)`);
    });

  targetOptions(program.command('resync-rate').description('change the resync bandwidth limit of the running server (storage.resyncRate is the next start\'s)'))
    .argument('<rate>', 'bytes per second, e.g. 64MiB; 0 for unlimited')
    .action(async (rate: string, options: TargetOptions) => {
      const bytesPerSecond = rate === '0' ? 0 : parseSizeArgument(rate, '<rate>');
      const socket = await requireOnline(options, 'resync-rate');
      const message = await adminRequest(socket, { command: 'resync-rate', bytesPerSecond });
      print(options, { message, bytesPerSecond }, () => String(message));
    });

  targetOptions(program.command('re-add').description('bring a faulty leg back; only regions written meanwhile are resynced'))
    .argument('<slot>', 'leg slot number', slotArgument)
    .option('--path <path>', 'the leg file (or a remote leg\'s NBD URI), if it moved')
    .option('--force', 'take the leg even if its label does not match, and rebuild it fully')
    .option('--wait', 'wait until the leg is in sync')
    .action((slot: number, options: TargetOptions & { path?: string; force?: boolean; wait?: boolean }) =>
      runAndWait(options, 're-add', { command: 're-add', slot, path: options.path && legLocation(options.path), force: options.force }, 're-add'));

  targetOptions(program.command('replace').description('put a new, empty leg in a slot and rebuild it online'))
    .argument('<slot>', 'leg slot number', slotArgument)
    .argument('<path>', 'new leg file (created), block device, or NBD URI of a remote export (seeds a replica on another host)')
    .option('--force', 'overwrite the new leg file if it exists')
    .option('--wait', 'wait until the new leg is in sync')
    .action((slot: number, legPath: string, options: TargetOptions & { force?: boolean; wait?: boolean }) =>
      runAndWait(options, 'replace', { command: 'replace', slot, path: legLocation(legPath), force: options.force }, 'rebuild'));

  const slotCommands: Array<[string, string]> = [
    ['fail', 'mark a leg faulty (mdadm --fail): it gets no more I/O; re-add brings it back'],
    ['remove', 'empty a faulty leg\'s slot (mdadm --remove); replace fills it'],
  ];
  for (const [name, description] of slotCommands) {
    targetOptions(program.command(name).description(description))
      .argument('<slot>', 'leg slot number', slotArgument)
      .action(async (slot: number, options: TargetOptions) => {
        const socket = await requireOnline(options, name);
        const message = await adminRequest(socket, { command: name, slot });
        print(options, { message }, () => String(message));
      });
  }

  registerEvents(program);

  const pool = program.command('pool').description('thin-provisioned legs');
  targetOptions(pool.command('grow').description('raise a thin leg\'s pool capacity (online through the admin socket, or offline)'))
    .argument('[slot]', 'leg slot number (0 for a plain export)', slotArgument, 0)
    .option('--to <size>', 'new pool capacity, e.g. 2GiB')
    .option('--by <size>', 'capacity to add, e.g. 512MiB')
    .action(async (slot: number, options: TargetOptions & { to?: string; by?: string }) => {
      if ((options.to === undefined) === (options.by === undefined)) throw new ToolError('pool grow: give exactly one of --to or --by');
      const size = { toBytes: options.to === undefined ? undefined : parseSizeArgument(options.to, '--to'),
        byBytes: options.by === undefined ? undefined : parseSizeArgument(options.by, '--by') };
      const socket = await online(options);
      let usage: PoolUsage;
      if (socket) {
        usage = await adminRequest(socket, { command: 'pool-grow', slot, ...size }) as PoolUsage;
      } else {
        // No server holds the pool: grow the file directly.
        const leg = targetConfig(options).storage.legs[slot];
        if (!leg) throw new ToolError(`pool grow: no leg slot ${slot}`);
        if (!leg.thin) throw new ToolError(`pool grow: storage.legs[${slot}] (${leg.path}) is not a thin leg`);
        const thin = await ThinLeg.open({ path: leg.path, lowWaterBytes: leg.thin.lowWaterBytes });
        try {
          usage = await thin.grow(size);
        } finally {
          await thin.close();
        }
      }
      // The configured poolSize only sizes a pool when it is created; say so rather than leave it looking stale.
      const configured = configuredPool(options, slot);
      print(options, usage, () => `leg ${slot}: ${formatPool(usage)}` + (configured !== undefined && configured !== usage.capacityBytes
        ? `\n(storage.legs[${slot}].thin.poolSize, ${configured} bytes, sizes a pool only when it is created; the pool itself now holds ${usage.capacityBytes})` : ''));
    });

  targetOptions(program.command('dump-log')
    .description('print both copies of a region log and its dirty regions (the configured log, or the file named)'))
    .argument('[log]', 'region log file (default: the configuration\'s storage.log)')
    .action((logArgument: string | undefined, options: TargetOptions) => {
      const logPath = logArgument ?? options.log ?? targetConfig(options).storage.log;
      if (logPath === undefined) throw new ToolError('dump-log: the configuration has no storage.log; name the log file');
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

function configuredPool(options: TargetOptions, slot: number): number | undefined {
  try {
    return targetConfig(options).storage.legs[slot]?.thin?.poolBytes;
  } catch {
    return undefined;
  }
}

/** A size given as a tool's argument or flag: the message names the flag, not a configuration key. */
function parseSizeArgument(value: string, flag: string): number {
  try {
    return parseSize(value, flag);
  } catch (error) {
    throw new ToolError(error instanceof ConfigError ? `${flag}: ${error.problem}` : (error as Error).message);
  }
}

async function statusReport(options: TargetOptions): Promise<StatusReport> {
  const socket = await online(options);
  if (socket) return await adminRequest(socket, { command: 'report' }) as StatusReport;
  const config = targetConfig(options);
  if (!config.storage.log) throw new ToolError(`${options.config ?? 'the configuration'} has no storage.log: a plain export has status only while it is served`, exitNoSuchMirror);
  return filesStatus(config, config.storage.log);
}

/** Compares the leg files directly; the server must not be running (nothing locks the regions). */
async function offlineCheck(config: Config, onProgress: (done: number, total: number) => void): Promise<CompareResult> {
  if (!config.storage.log) throw new ToolError('check: the configuration has no storage.log, so there is no mirror to compare');
  const { state } = RegionLog.inspect(config.storage.log);
  const slots = state.legs.flatMap((record, slot) => (record.state === 'in_sync' ? [slot] : []));
  const logger = createLogger('silent');
  const legs = await Promise.all(slots.map(async (slot) => ({
    slot, device: (await openLeg({ path: config.storage.legs[slot].path, thin: config.storage.legs[slot].thin, remote: config.storage.legs[slot].remote },
      state.deviceSizeBytes, logger, { readOnly: true })).device,
  })));
  try {
    return await compareRegions({ sizeBytes: state.deviceSizeBytes, regionSizeBytes: state.regionSizeBytes, legs }, onProgress);
  } finally {
    await Promise.all(legs.map((leg) => leg.device.close()));
  }
}
