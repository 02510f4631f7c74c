import fs from 'node:fs';
import path from 'node:path';
import { isNbdUri } from '../backends/nbd-client/nbd-uri.js';
import YAML from 'yaml';
import { type Config, ConfigError, defaultConfigYaml, parseConfig } from './schema.js';
import { type ConfigOverrides, flagName, settings } from './settings.js';

export type { ConfigOverrides } from './settings.js';

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

/** Makes the error for a bad setting, naming the flag when the command line gave it, else the key and its source. */
export type Blame = (key: string, problem: string) => ConfigError;

export function blameFor(source: string, overrides: ConfigOverrides): Blame {
  return (key, problem) => {
    const flag = flagBehind(key, overrides);
    return flag !== undefined ? new ConfigError(flag, problem, 'command line') : new ConfigError(key, problem, source);
  };
}

/** Names the built-in defaults where a file name would go (messages, the "listening" line). */
const builtInDefaults = '(built-in defaults)';

/** Where a configuration came from, and whether the embedded default's folder still has to be written. */
export interface LoadedConfig {
  config: Config;
  /** The file read, or "(built-in defaults)". */
  source: string;
  /** For errors found later (credentials, listeners): names the flag or the key in this source. */
  blame: Blame;
  /**
   * Set when the embedded default has no config.yaml yet: the caller writes it
   * (ensureDefaultDataDir) once everything else has been validated. A tool that
   * only reads never does, and reports that no mirror is configured.
   */
  pendingDataDir?: string;
}

/**
 * The configuration when no --config is given: DATA_DIR/config.yaml, or the
 * embedded default's text when that file does not exist yet. Nothing is
 * written here (see LoadedConfig.pendingDataDir). Legs named on the command
 * line are a server of their own: an existing file still gives the other
 * settings, but nothing is created for them, and they take none of its
 * storage or sockets (see applyOverrides).
 */
export function loadDefaultConfig(dataDir: string, overrides: ConfigOverrides = {}): LoadedConfig {
  const file = path.join(dataDir, 'config.yaml');
  if (!fs.existsSync(file)) {
    const config = configFromText(defaultConfigYaml, builtInDefaults, dataDir, overrides);
    if (overrides.legs !== undefined) return { config, source: builtInDefaults, blame: blameFor(builtInDefaults, overrides) };
    // The file written later holds exactly that text, read from the same folder.
    return { config, source: file, blame: blameFor(file, overrides), pendingDataDir: dataDir };
  }
  return { config: loadConfig(file, overrides), source: file, blame: blameFor(file, overrides) };
}

/** `--config FILE`, or without one the embedded default (loadDefaultConfig); `source` names where it came from. */
export function loadConfigOrDefault(configFile: string | undefined, dataDir: string, overrides: ConfigOverrides = {}): LoadedConfig {
  if (configFile !== undefined) {
    const source = path.resolve(configFile);
    return { config: loadConfig(configFile, overrides), source, blame: blameFor(source, overrides) };
  }
  return loadDefaultConfig(dataDir, overrides);
}

/**
 * The YAML library reports an over-indented line as an error on the line
 * above it ("nested mappings are not allowed in compact mappings"); the line
 * to fix is the one that is indented too far, where the multi-line key ends.
 */
function describeYamlError(errors: readonly YAML.YAMLError[]): { where: string; problem: string } {
  const multiline = errors.find((error) => error.code === 'MULTILINE_IMPLICIT_KEY');
  const start = multiline?.linePos?.[0];
  const end = multiline?.linePos?.[1];
  if (start && end && end.line > start.line) {
    return { where: `line ${end.line}`, problem: `indented deeper than line ${start.line}, which already has a value ` +
      `(indent it like the keys beside it, or move the value of line ${start.line} onto lines of its own)` };
  }
  const first = errors[0];
  const position = first.linePos?.[0];
  // The library appends " at line L, column C:" and a code excerpt; the position is given once, in front.
  const problem = first.message.split('\n')[0].replace(/ at line \d+, column \d+:?$/, '');
  return { where: position ? `line ${position.line}, column ${position.col}` : '(syntax)', problem };
}

/** Parses, applies overrides and validates; `source` names the text in messages, `baseDir` anchors its relative paths. */
function configFromText(text: string, source: string, baseDir: string, overrides: ConfigOverrides): Config {
  const document = YAML.parseDocument(text, { prettyErrors: true });
  if (document.errors.length > 0) {
    const { where, problem } = describeYamlError(document.errors);
    throw new ConfigError(where, `invalid YAML: ${problem}`, source);
  }
  const raw: unknown = document.toJS() ?? {};
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError('(top level)', 'must be a mapping', source);
  try {
    return parseConfig(applyOverrides(raw as Record<string, unknown>, overrides), baseDir);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    throw blameFor(source, overrides)(error.key, error.problem);
  }
}

/** The configuration keys each flag sets (from the settings table, and --leg), so an error in a value given on the command line names the flag. */
const flagsByKey: Array<[string, keyof ConfigOverrides, string]> = [
  ...settings.flatMap((setting): Array<[string, keyof ConfigOverrides, string]> =>
    (setting.override && flagName(setting) ? [[setting.key, setting.override, flagName(setting)!]] : [])),
  ['storage.legs', 'legs', '--leg'],
];

function flagBehind(key: string, overrides: ConfigOverrides): string | undefined {
  for (const [configKey, override, flag] of flagsByKey) {
    const matches = key === configKey || key.startsWith(`${configKey}.`) || key.startsWith(`${configKey}[`);
    if (matches && overrides[override] !== undefined && overrides[override] !== null) return flag;
  }
  return undefined;
}

function section(raw: Record<string, unknown>, name: string): Record<string, unknown> {
  const value = raw[name];
  if (value === undefined || value === null) return (raw[name] = {}) as Record<string, unknown>;
  return value as Record<string, unknown>;
}

/**
 * Writes each override into its key (the settings table says which); paths
 * from flags are relative to the working directory, so they are made
 * absolute here. Legs and the cache switch have rules of their own.
 */
function applyOverrides(raw: Record<string, unknown>, overrides: ConfigOverrides): Record<string, unknown> {
  const copy = structuredClone(raw);
  if (overrides.legs !== undefined) {
    section(copy, 'storage').legs = overrides.legs.map((leg) => ({ path: isNbdUri(leg) ? leg : path.resolve(leg) }));
    // Legs named on the command line do not belong to the file's log: only --log makes them a mirror.
    if (overrides.log === undefined) section(copy, 'storage').log = null;
    // Nor to the file's sockets, which the configured server may be using.
    if (overrides.admin === undefined) section(copy, 'listen').admin = null;
    if (overrides.unix === undefined) section(copy, 'listen').unix = null;
  }
  if (overrides.cache !== undefined) {
    if (copy.cache === false) copy.cache = null;
    section(copy, 'cache').enabled = overrides.cache;
  }
  for (const setting of settings) {
    const value = setting.override === undefined ? undefined : overrides[setting.override];
    if (value === undefined) continue;
    const [sectionName, key] = setting.key.split('.');
    section(copy, sectionName)[key] = setting.path && typeof value === 'string' ? path.resolve(value) : value;
  }
  return copy;
}

/** The embedded default: a data folder holding config.yaml and the legs, created on first start. */
export function ensureDefaultDataDir(dataDir: string): string {
  fs.mkdirSync(dataDir, { recursive: true });
  const file = path.join(dataDir, 'config.yaml');
  if (!fs.existsSync(file)) fs.writeFileSync(file, defaultConfigYaml, { flag: 'wx' });
  return file;
}
