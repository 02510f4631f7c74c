// The thread pool serves leg I/O and fdatasync; a few threads beat many on 2 cores.
process.env.UV_THREADPOOL_SIZE ??= '4';

import path from 'node:path';
import { Command, Option } from 'commander';
import { filesLeftUnlocked } from '../backends/file-lock.js';
import { type ConfigOverrides, loadConfigOrDefault } from '../config/load.js';
import { ConfigError } from '../config/schema.js';
import { armCrashPoint } from '../faults/crash-points.js';
import { createLogger } from './logger.js';
import { attachHints, startServer } from './serve.js';
import { recordLegPath } from '../config/update.js';
import { registerTools } from '../tools/commands.js';

const program = new Command();
program.name('nbd-mirror').description('NBD block-device server over a mirrored, crash-safe store');

program.command('serve')
  .description('serve the export; without --config, uses (and on first run creates) DATA_DIR/config.yaml, unless --leg names the storage')
  .option('-c, --config <file>', 'YAML configuration file')
  .option('-d, --data-dir <dir>', 'folder for the embedded default configuration and legs', 'data')
  .option('-l, --listen <host:port>', 'TCP address to listen on')
  .option('--no-tcp', 'do not listen on TCP')
  .option('-u, --unix <path>', 'unix socket to listen on')
  .option('--no-unix', 'do not listen on a unix socket')
  .option('-n, --export-name <name>', 'export name')
  .option('--description <text>', 'export description')
  .option('-r, --read-only', 'serve the export read-only')
  .option('--leg <path...>', 'leg file or block device (overrides storage.legs; with --log, the mirror legs)')
  .option('--log <path>', 'region log: the legs form a mirror (created on first start if nothing exists yet)')
  .option('--admin <path>', 'admin socket for nbd-mirror status/re-add/replace/check')
  .option('--no-admin', 'no admin socket')
  .option('--region-size <size>', 'region size for a mirror created on first start, e.g. 1MiB')
  .option('--sweep-interval-ms <n>', 'how often the sweeper clears quiet regions', (value) => parseInteger(value, '--sweep-interval-ms'))
  .option('--force', 'take in legs that are stale, foreign or unlabelled, and rebuild them fully')
  .option('--size <size>', 'size of leg files created on first start, e.g. 1GiB')
  .option('--cache', 'put the write-back page cache above the legs (settings from the configuration)')
  .option('--no-cache', 'serve without the write-back page cache')
  .option('--max-connections <n>', 'maximum simultaneous clients', (value) => parseInteger(value, '--max-connections'))
  .option('--handshake-timeout-ms <n>', 'disconnect clients that do not finish negotiating',
    (value) => parseInteger(value, '--handshake-timeout-ms'))
  .option('--poll-max-us <n>', 'after input, poll up to this many microseconds before sleeping (adaptive; 0: never)',
    (value) => parseInteger(value, '--poll-max-us'))
  .option('--crash-point <point>', 'crash-injection testing: point[@hit][+ms][:kill|power-cut] ends the process at the hit-th time the point is reached at least ms after the start')
  .addOption(new Option('--log-level <level>', 'log level').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']))
  .action(async (options: Record<string, unknown>) => {
    const overrides: ConfigOverrides = {
      tcp: options.tcp === false ? null : (options.listen as string | undefined),
      unix: options.unix === false ? null : (typeof options.unix === 'string' ? options.unix : undefined),
      exportName: options.exportName as string | undefined,
      description: options.description as string | undefined,
      readOnly: options.readOnly === true ? true : undefined,
      legs: options.leg as string[] | undefined,
      log: options.log as string | undefined,
      admin: options.admin === false ? null : (typeof options.admin === 'string' ? options.admin : undefined),
      regionSize: options.regionSize as string | undefined,
      sweepIntervalMs: options.sweepIntervalMs as number | undefined,
      force: options.force === true ? true : undefined,
      sizeBytes: options.size as string | undefined,
      cache: typeof options.cache === 'boolean' ? options.cache : undefined,
      maxConnections: options.maxConnections as number | undefined,
      handshakeTimeoutMs: options.handshakeTimeoutMs as number | undefined,
      pollMaxMicroseconds: options.pollMaxUs as number | undefined,
      logLevel: options.logLevel as string | undefined,
      crashPoint: options.crashPoint as string | undefined,
    };
    const { config, source: configSource } = loadConfigOrDefault(typeof options.config === 'string' ? options.config : undefined,
      path.resolve(String(options.dataDir)), overrides);
    const logger = createLogger(config.log.level);
    if (config.crash) {
      armCrashPoint(config.crash);
      logger.warn({ crash: config.crash }, 'crash point armed: this server will end itself there');
    }
    const running = await startServer(config, logger, {
      onLegPathChanged: (slot, legPath) => {
        if (overrides.legs === undefined) {
          recordLegPath(configSource, slot, legPath);
          logger.info({ slot, path: legPath, config: configSource }, 'leg replaced: configuration updated');
        } else {
          logger.warn({ slot, path: legPath }, 'leg replaced: update the --leg arguments before the next start');
        }
      },
    });
    for (const [file, reason] of filesLeftUnlocked) {
      logger.warn({ path: file, reason }, 'file not locked: nothing stops a second server or a tool from writing it meanwhile');
    }
    logger.info({ tcp: running.addresses.tcp, unix: running.addresses.unixPath, admin: config.listen.admin, cache: running.cache !== undefined,
      export: config.export.name, recoveryRegions: running.mirror?.recoveryRegions,
      sizeBytes: running.device.sizeBytes, config: configSource }, 'listening');
    for (const hint of attachHints(config, running.addresses)) logger.info(`attach with: ${hint}`);
    let signals = 0;
    const onSignal = (signal: NodeJS.Signals): void => {
      signals += 1;
      if (signals > 1) {
        logger.warn({ signal }, 'second signal: exiting without waiting');
        process.exit(1);
      }
      logger.info({ signal }, 'shutting down: finishing in-flight requests, flushing');
      running.stop().then(() => {
        logger.info('stopped cleanly');
        process.exit(0);
      }, (error: unknown) => {
        logger.error({ err: error }, 'shutdown failed: data may not be durable');
        process.exit(1);
      });
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });

registerTools(program);

function parseInteger(value: string, flag: string): number {
  const number = Number(value);
  if (!Number.isSafeInteger(number)) throw new ConfigError(flag, `"${value}" is not an integer`, 'command line');
  return number;
}

program.parseAsync(process.argv).catch((error: unknown) => {
  // Operator-facing errors carry a precise message; a stack helps only when debugging.
  console.error(`nbd-mirror: ${error instanceof Error ? error.message : String(error)}`);
  if (process.env.NBD_MIRROR_DEBUG) console.error(error);
  process.exit(2);
});
