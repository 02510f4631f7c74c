import fs from 'node:fs';
import path from 'node:path';
import { type Command, Option } from 'commander';
import type { Logger } from 'pino';
import { filesLeftUnlocked } from '../sys/file-lock.js';
import { type ConfigOverrides, loadConfigOrDefault } from '../config/load.js';
import { type Config, ConfigError } from '../config/schema.js';
import { flagName, settings } from '../config/settings.js';
import { recordLegPath } from '../config/update.js';
import { createLogger } from '../observe/logger.js';
import { attachHints, type RunningServer, startServer } from './serve.js';
import { missingServerNodeFlags } from '../sys/node-flags.js';

function parseInteger(value: string, flag: string): number {
  const number = Number(value);
  if (!Number.isSafeInteger(number)) throw new ConfigError(flag, `"${value}" is not an integer`, 'command line');
  return number;
}

export function registerServe(program: Command): void {
  const command = program.command('serve')
    .description('serve the export; without --config, uses (and on first run creates) DATA_DIR/config.yaml, unless --leg names the storage')
    .option('-c, --config <file>', 'YAML configuration file')
    .option('-d, --data-dir <dir>', 'folder for the embedded default configuration and legs', 'data')
    .option('-p, --port <port>', 'TCP port on 127.0.0.1 (the same as --listen 127.0.0.1:PORT)')
    .option('--leg <path...>', 'leg file or block device (overrides storage.legs; with --log, the mirror legs)');
  // Each setting's flag, from the one settings table (config/settings.ts).
  for (const setting of settings) {
    const { flag } = setting;
    if (flag === undefined) continue;
    const option = new Option(flag.spec, `${flag.help} (${setting.key})`);
    if (flag.integer) option.argParser((value: string) => parseInteger(value, flagName(setting)!));
    if (flag.choices) option.choices(flag.choices);
    command.addOption(option);
  }
  // Negations after the flags they negate: commander then leaves the default unset.
  command
    .option('--no-tcp', 'do not listen on TCP')
    .option('--no-unix', 'do not listen on a unix socket')
    .option('--no-admin', 'no admin socket')
    .option('--cache', 'put the write-back page cache above the legs (settings from the configuration)')
    .option('--no-cache', 'serve without the write-back page cache')
    .option('--pid-file <file>', 'write the server\'s PID here once it listens (removed at a clean stop)')
    .option('--exit-with-parent', 'stop cleanly when the parent process exits (npm start uses it; like nbdkit\'s flag)')
    .action(serve);
}

/** commander's name for a flag's value: --poll-max-us is pollMaxUs. */
function attributeOf(flag: string): string {
  return flag.replace(/^--/, '').replace(/-([a-z])/g, (_match, letter: string) => letter.toUpperCase());
}

function overridesFrom(options: Record<string, unknown>): ConfigOverrides {
  if (options.port !== undefined && options.listen !== undefined) throw new ConfigError('--port', 'give --listen or --port, not both', 'command line');
  const overrides: Record<string, unknown> = {};
  for (const setting of settings) {
    const flag = flagName(setting);
    if (flag === undefined || setting.override === undefined) continue;
    const value = options[attributeOf(flag)];
    const takesValue = setting.flag!.spec.includes('<');
    // --no-unix and --no-admin leave false: the setting is turned off.
    if (value === false) overrides[setting.override] = null;
    else if (takesValue ? value !== undefined : value === true) overrides[setting.override] = value;
  }
  const port = options.port === undefined ? undefined : `127.0.0.1:${String(options.port)}`;
  overrides.tcp = options.tcp === false ? null : overrides.tcp ?? port;
  overrides.legs = options.leg;
  overrides.cache = typeof options.cache === 'boolean' ? options.cache : undefined;
  return overrides as ConfigOverrides;
}

async function serve(options: Record<string, unknown>): Promise<void> {
  // An invalid --port is reported as the flag, not as listen.tcp.
  if (options.port !== undefined && !/^\d+$/.test(String(options.port))) {
    throw new ConfigError('--port', `"${String(options.port)}" is not a port number`, 'command line');
  }
  const overrides = overridesFrom(options);
  const configFile = typeof options.config === 'string' ? options.config : undefined;
  const dataDir = path.resolve(String(options.dataDir));
  const loaded = loadConfigOrDefault(configFile, dataDir, overrides);
  const { config } = loaded;
  const logger = createLogger(config.log.level);
  const commandLineLegs = overrides.legs !== undefined;
  /** What the server runs with, for telling what a reload cannot apply; `replace` moves a leg while running. */
  let runningConfig: Config = config;
  const running = await startServer(config, logger, {
    blame: loaded.blame,
    pendingDataDir: loaded.pendingDataDir,
    onLegPathChanged: (slot, legPath) => {
      if (!commandLineLegs) {
        const kept = recordLegPath(loaded.source, slot, legPath);
        try {
          runningConfig = { ...runningConfig, storage: { ...runningConfig.storage, legs: loadConfigOrDefault(configFile, dataDir, overrides).config.storage.legs } };
        } catch {
          // The file was just written by us; if it does not read back, the next reload reports that.
        }
        logger.info({ slot, path: legPath, config: loaded.source, backup: kept.backup }, 'leg replaced: configuration updated');
        return `${loaded.source} now names ${kept.written} for leg ${slot} (the previous file is kept as ${kept.backup})`;
      }
      const legs = [...(overrides.legs ?? [])];
      legs[slot] = path.relative(process.cwd(), legPath) || legPath;
      logger.warn({ slot, path: legPath }, 'leg replaced: update the --leg arguments before the next start');
      return `this server was started with --leg: start it next time with --leg ${legs.join(' ')}`;
    },
  });
  for (const [file, reason] of filesLeftUnlocked) {
    logger.warn({ path: file, reason }, 'file not locked: nothing stops a second server or a tool from writing it meanwhile');
  }
  const missingFlags = missingServerNodeFlags();
  if (missingFlags.length > 0) {
    logger.warn({ missing: missingFlags }, `node was started without ${missingFlags.join(' ')}: V8 then runs full garbage collections ` +
      'far more often under load, and small requests cost more CPU (see sys/node-flags.ts); bin/nbd-mirror.js and npm start pass them');
  }
  const pidFile = typeof options.pidFile === 'string' ? path.resolve(options.pidFile) : undefined;
  if (pidFile) writePidFile(pidFile);
  logger.info({ tcp: running.addresses.tcp, unix: running.addresses.unixPath, admin: config.listen.admin,
    metrics: running.addresses.metrics, cache: running.cache !== undefined, export: config.export.name,
    recoveryRegions: running.mirror?.recoveryRegions, sizeBytes: running.device.sizeBytes, config: loaded.source, pid: process.pid }, 'listening');
  for (const hint of attachHints(config, running.addresses)) logger.info(`attach with: ${hint}`);
  handleSignals(running, logger, pidFile, () => reloadSettings(running, logger, configFile, dataDir, overrides, runningConfig));
  if (options.exitWithParent === true) exitWithParent(logger);
}

function writePidFile(pidFile: string): void {
  const temporary = `${pidFile}.tmp-${process.pid}`;
  fs.writeFileSync(temporary, `${process.pid}\n`);
  fs.renameSync(temporary, pidFile);
}

/** Signals repeated within this long count as one (see onStop). */
const repeatedSignalGraceMs = 1000;

/**
 * SIGINT, SIGTERM and SIGQUIT stop cleanly (a second one, a second or more
 * later, exits at once).
 * SIGHUP, which a closing terminal or `systemctl reload` sends, never stops
 * the server: it re-reads the settings that can change while running.
 */
function handleSignals(running: RunningServer, logger: Logger, pidFile: string | undefined, reload: () => void): void {
  let firstSignalMs: number | undefined;
  const onStop = (signal: NodeJS.Signals): void => {
    if (firstSignalMs !== undefined) {
      // Ctrl-C under `npm start` arrives twice at once: from the terminal, and forwarded by npm.
      // Only a second signal an operator sends on purpose, a moment later, skips the clean stop.
      if (Date.now() - firstSignalMs < repeatedSignalGraceMs) return;
      logger.warn({ signal }, 'second signal: exiting without waiting');
      process.exit(1);
    }
    firstSignalMs = Date.now();
    logger.info({ signal }, 'shutting down: finishing in-flight requests, flushing');
    running.stop().then(() => {
      if (pidFile) fs.rmSync(pidFile, { force: true });
      logger.info('stopped cleanly');
      process.exit(0);
    }, (error: unknown) => {
      logger.error({ err: error }, 'shutdown failed: data may not be durable');
      process.exit(1);
    });
  };
  process.on('SIGINT', onStop);
  process.on('SIGTERM', onStop);
  process.on('SIGQUIT', onStop);
  process.on('SIGHUP', () => {
    logger.info({ signal: 'SIGHUP' }, 'reloading settings (SIGHUP never stops the server)');
    reload();
  });
}

/**
 * What SIGHUP re-reads: the log level, the resync rate, the sweep interval,
 * and for clients that connect from now on the TLS settings (a renewed
 * certificate), the allow list and the admission limits. All or nothing: a
 * configuration or credential error keeps every running setting.
 */
function reloadSettings(running: RunningServer, logger: Logger, configFile: string | undefined, dataDir: string,
  overrides: ConfigOverrides, runningWith: Config): void {
  let config;
  try {
    let blame;
    ({ config, blame } = loadConfigOrDefault(configFile, dataDir, overrides));
    running.reconfigureClients(config, blame);
  } catch (error) {
    logger.error({ err: (error as Error).message }, 'reload refused: the configuration has an error; the running settings stay');
    return;
  }
  // Against what the server runs with: what needs a restart keeps being reported until it has one.
  const needRestart = changedSettings(runningWith, config).filter((key) => !appliedOnReload.some((applied) => key === applied || key.startsWith(`${applied}.`)));
  if (needRestart.length > 0) {
    // Not applied: said once, by name, so an operator who changed listen.tcp does not wait for a port that never opens.
    logger.warn({ keys: needRestart }, `changed in the configuration but not applied until a restart: ${needRestart.join(', ')}`);
  }
  logger.level = config.log.level;
  running.mirror?.setResyncRate(config.storage.resyncBytesPerSecond);
  running.sweeper.setInterval(config.storage.sweepIntervalMs);
  logger.info({ logLevel: config.log.level, resyncRate: config.storage.resyncBytesPerSecond,
    sweepIntervalMs: config.storage.sweepIntervalMs, tls: config.tls.mode, allow: config.listen.allow ?? 'any' },
  'settings reloaded (TLS and admission for new clients); listeners, storage and cache need a restart to change');
}

/** Parsed configuration keys SIGHUP applies (reloadSettings); a change to any other is logged as needing a restart. */
const appliedOnReload = ['log.level', 'storage.resyncBytesPerSecond', 'storage.sweepIntervalMs', 'tls', 'listen.allow',
  'limits.maxConnections', 'limits.negotiatingMax', 'limits.perAddressMax'];

/** The `section.key` names whose values differ between two parsed configurations. */
function changedSettings(before: Config, after: Config): string[] {
  const changed: string[] = [];
  const sections = new Set([...Object.keys(before), ...Object.keys(after)]);
  for (const section of sections) {
    const a = (before as unknown as Record<string, unknown>)[section];
    const b = (after as unknown as Record<string, unknown>)[section];
    const isSection = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);
    if (!isSection(a) || !isSection(b)) {
      if (JSON.stringify(a) !== JSON.stringify(b)) changed.push(section);
      continue;
    }
    for (const key of new Set([...Object.keys(a), ...Object.keys(b)])) {
      if (JSON.stringify(a[key]) !== JSON.stringify(b[key])) changed.push(`${section}.${key}`);
    }
  }
  return changed;
}

/**
 * `npm start` runs the server under npm and a shell; a SIGTERM sent to npm's
 * PID does not reach us, and we would go on serving with PPID 1. Polled once
 * a second: when the parent is gone, stop as for SIGTERM.
 */
function exitWithParent(logger: Logger): void {
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(timer);
    logger.info({ parent }, 'the parent process exited (--exit-with-parent)');
    process.kill(process.pid, 'SIGTERM');
  }, 1000);
  timer.unref();
}
