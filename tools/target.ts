import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { type ConfigOverrides, ensureDefaultDataDir, loadConfigOrDefault } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { adminRequest } from './admin-client.js';
import { exitNoSuchMirror, ToolError } from './tool-error.js';

export interface TargetOptions {
  config?: string;
  leg?: string[];
  log?: string;
  dataDir: string;
  admin?: string;
  json?: boolean;
}

/** The -c/-d/--admin/--leg/--log/--json options every tool takes. */
export function targetOptions(command: Command): Command {
  return command
    .option('-c, --config <file>', 'configuration file of the mirror')
    .option('-d, --data-dir <dir>', 'data folder of the embedded default', 'data')
    .option('--admin <socket>', 'admin socket of a running server')
    .option('--leg <path...>', 'leg files (instead of the configuration\'s)')
    .option('--log <path>', 'region log file (instead of the configuration\'s)')
    .option('--json', 'print JSON');
}

/**
 * The configuration a tool acts on: --config, or the embedded default's data
 * folder. Tools never create it: with no config.yaml there (and no --leg or
 * --log), there is no mirror to act on, and they say so.
 */
export function targetConfig(options: TargetOptions, overrides: ConfigOverrides = {}, how: { createDataDir?: boolean } = {}): Config {
  const loaded = loadConfigOrDefault(options.config, path.resolve(options.dataDir), { legs: options.leg, log: options.log, ...overrides });
  if (loaded.pendingDataDir !== undefined) {
    if (!how.createDataDir) throw noMirror(options);
    ensureDefaultDataDir(loaded.pendingDataDir);
  }
  return loaded.config;
}

export function noMirror(options: TargetOptions): ToolError {
  const shown = path.isAbsolute(options.dataDir) ? options.dataDir : `./${path.normalize(options.dataDir)}`;
  return new ToolError(`no mirror configured in ${shown}; use -c or -d`, exitNoSuchMirror);
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

/**
 * The admin socket of a running server, if one answers. With --admin the
 * operator named the server: when it does not answer, that is the answer
 * (exit 4), never a fall-back to ./data.
 */
export async function online(options: TargetOptions): Promise<string | undefined> {
  const socket = adminSocketOf(options);
  const answers = socket !== undefined && fs.existsSync(socket) && await adminRequest(socket, { command: 'status' }, undefined, 5000)
    .then(() => true, () => false);
  if (answers) return socket;
  if (options.admin) throw new ToolError(`no server answers on the admin socket ${socket}`, exitNoSuchMirror);
  return undefined;
}

export async function requireOnline(options: TargetOptions, what: string): Promise<string> {
  const socket = await online(options);
  if (socket) return socket;
  const configured = adminSocketOf(options);
  if (configured === undefined && !options.leg && !options.log && !options.config) targetConfig(options);
  throw new ToolError(`${what} runs against a running server, and none answers on ${configured ?? '(no admin socket configured)'}; ` +
    'start it with nbd-mirror serve', exitNoSuchMirror);
}

export function print(options: Pick<TargetOptions, 'json'>, value: unknown, text: () => string): void {
  console.log(options.json ? JSON.stringify(value, (_key, entry: unknown) => (typeof entry === 'bigint' ? entry.toString() : entry), 2) : text());
}
