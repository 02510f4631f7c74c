import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { type Config, ConfigError, defaultConfigYaml, parseConfig } from './schema.js';

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
  regionSize?: string;
  sweepIntervalMs?: number;
  force?: boolean;
  /** Turns the write-back cache on or off, keeping the file's other cache settings. */
  cache?: boolean;
  sizeBytes?: string;
  maxConnections?: number;
  handshakeTimeoutMs?: number;
  pollMaxMicroseconds?: number;
  logLevel?: string;
  /** point[@hit][:kill|power-cut] (crash-injection testing). */
  crashPoint?: string;
}

/** Reads a YAML configuration file, applies overrides, validates; errors name the file and the key. */
export function loadConfig(file: string, overrides: ConfigOverrides = {}): Config {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError('(file)', `cannot read: ${(error as Error).message}`, file);
  }
  return configFromText(text, file, path.dirname(path.resolve(file)), overrides);
}

/** Names the built-in defaults where a file name would go (messages, the "listening" line). */
const builtInDefaults = '(built-in defaults)';

/**
 * The configuration when no --config is given: DATA_DIR/config.yaml, created
 * on first use. Legs named on the command line are a server of their own:
 * an existing file still gives the other settings, but nothing is created
 * for them, and they take none of its storage or sockets (see applyOverrides).
 */
export function loadDefaultConfig(dataDir: string, overrides: ConfigOverrides = {}): { config: Config; source: string } {
  const file = path.join(dataDir, 'config.yaml');
  if (!fs.existsSync(file)) {
    // Checked before anything is written: a refused flag creates nothing.
    const config = configFromText(defaultConfigYaml, builtInDefaults, dataDir, overrides);
    if (overrides.legs !== undefined) return { config, source: builtInDefaults };
    // The file written holds exactly that text, read from the same folder.
    ensureDefaultDataDir(dataDir);
    return { config, source: file };
  }
  return { config: loadConfig(file, overrides), source: file };
}

/** `--config FILE`, or without one the embedded default (loadDefaultConfig); `source` names where it came from. */
export function loadConfigOrDefault(configFile: string | undefined, dataDir: string, overrides: ConfigOverrides = {}):
  { config: Config; source: string } {
  if (configFile !== undefined) return { config: loadConfig(configFile, overrides), source: path.resolve(configFile) };
  return loadDefaultConfig(dataDir, overrides);
}

/** Parses, applies overrides and validates; `source` names the text in messages, `baseDir` anchors its relative paths. */
function configFromText(text: string, source: string, baseDir: string, overrides: ConfigOverrides): Config {
  const document = YAML.parseDocument(text, { prettyErrors: true });
  if (document.errors.length > 0) {
    const first = document.errors[0];
    const where = first.linePos?.[0] ? `line ${first.linePos[0].line}, column ${first.linePos[0].col}` : '(syntax)';
    throw new ConfigError(where, `invalid YAML: ${first.message.split('\n')[0]}`, source);
  }
  const raw: unknown = document.toJS() ?? {};
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError('(top level)', 'must be a mapping', source);
  try {
    return parseConfig(applyOverrides(raw as Record<string, unknown>, overrides), baseDir);
  } catch (error) {
    if (error instanceof ConfigError) throw error.from(source);
    throw error;
  }
}

function section(raw: Record<string, unknown>, name: string): Record<string, unknown> {
  const value = raw[name];
  if (value === undefined || value === null) return (raw[name] = {}) as Record<string, unknown>;
  return value as Record<string, unknown>;
}

/** Paths from flags are relative to the working directory, so they are made absolute here. */
function applyOverrides(raw: Record<string, unknown>, overrides: ConfigOverrides): Record<string, unknown> {
  const copy = structuredClone(raw);
  if (overrides.tcp !== undefined) section(copy, 'listen').tcp = overrides.tcp;
  if (overrides.unix !== undefined) {
    section(copy, 'listen').unix = overrides.unix === null ? null : path.resolve(overrides.unix);
  }
  if (overrides.exportName !== undefined) section(copy, 'export').name = overrides.exportName;
  if (overrides.description !== undefined) section(copy, 'export').description = overrides.description;
  if (overrides.readOnly !== undefined) section(copy, 'export').readOnly = overrides.readOnly;
  if (overrides.legs !== undefined) {
    section(copy, 'storage').legs = overrides.legs.map((leg) => ({ path: path.resolve(leg) }));
    // Legs named on the command line do not belong to the file's log: only --log makes them a mirror.
    if (overrides.log === undefined) section(copy, 'storage').log = null;
    // Nor to the file's sockets, which the configured server may be using.
    if (overrides.admin === undefined) section(copy, 'listen').admin = null;
    if (overrides.unix === undefined) section(copy, 'listen').unix = null;
  }
  if (overrides.log !== undefined) section(copy, 'storage').log = overrides.log === null ? null : path.resolve(overrides.log);
  if (overrides.admin !== undefined) section(copy, 'listen').admin = overrides.admin === null ? null : path.resolve(overrides.admin);
  if (overrides.regionSize !== undefined) section(copy, 'storage').regionSize = overrides.regionSize;
  if (overrides.sweepIntervalMs !== undefined) section(copy, 'storage').sweepIntervalMs = overrides.sweepIntervalMs;
  if (overrides.force !== undefined) section(copy, 'storage').force = overrides.force;
  if (overrides.sizeBytes !== undefined) section(copy, 'storage').sizeBytes = overrides.sizeBytes;
  if (overrides.cache !== undefined) {
    if (copy.cache === false) copy.cache = null;
    section(copy, 'cache').enabled = overrides.cache;
  }
  if (overrides.maxConnections !== undefined) section(copy, 'limits').maxConnections = overrides.maxConnections;
  if (overrides.handshakeTimeoutMs !== undefined) section(copy, 'limits').handshakeTimeoutMs = overrides.handshakeTimeoutMs;
  if (overrides.pollMaxMicroseconds !== undefined) section(copy, 'limits').pollMaxMicroseconds = overrides.pollMaxMicroseconds;
  if (overrides.logLevel !== undefined) section(copy, 'log').level = overrides.logLevel;
  if (overrides.crashPoint !== undefined) section(copy, 'crash').point = overrides.crashPoint;
  return copy;
}

/** The embedded default: a data folder holding config.yaml and the legs, created on first start. */
export function ensureDefaultDataDir(dataDir: string): string {
  fs.mkdirSync(dataDir, { recursive: true });
  const file = path.join(dataDir, 'config.yaml');
  if (!fs.existsSync(file)) fs.writeFileSync(file, defaultConfigYaml, { flag: 'wx' });
  return file;
}
