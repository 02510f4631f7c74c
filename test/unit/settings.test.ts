import { spawnSync } from 'node:child_process';
import test from 'ava';
import YAML from 'yaml';
import { parseConfig } from '../../config/schema.js';
import { defaultConfigText, flagName, settings } from '../../config/settings.js';
import { cliPath } from '../helpers/server-process.js';

test('every integer setting parses to its enforcing module\'s default, and is refused just outside its bounds', (t) => {
  const base = YAML.parse(defaultConfigText()) as Record<string, Record<string, unknown>>;
  const parsed = parseConfig(base, '/tmp') as unknown as Record<string, Record<string, unknown>>;
  const withBounds = settings.filter((setting) => setting.bounds !== undefined);
  t.true(withBounds.length >= 8);
  for (const setting of withBounds) {
    // These keep their names from the file to the parsed configuration.
    const [section, name] = setting.key.split('.');
    t.is(parsed[section][name], setting.bounds!.default, `${setting.key} defaults to ${setting.bounds!.default}`);
    for (const outside of [setting.bounds!.min - 1, setting.bounds!.max + 1]) {
      const raw = structuredClone(base);
      raw[section] = { ...(raw[section] ?? {}), [name]: outside };
      t.throws(() => parseConfig(raw, '/tmp'), { message: new RegExp(`${setting.key.replace('.', '\\.')}: ${outside} is outside`) });
    }
  }
});

test('every key of the settings table is a key the parser accepts', (t) => {
  for (const setting of settings) {
    const [section, name] = setting.key.split('.');
    const raw = YAML.parse(defaultConfigText()) as Record<string, Record<string, unknown>>;
    raw[section] = { ...(raw[section] ?? {}), [name]: null };
    const problem = (() => {
      try {
        parseConfig(raw, '/tmp');
        return undefined;
      } catch (error) {
        return (error as Error).message;
      }
    })();
    t.false(problem?.includes('unknown key') ?? false, `${setting.key}: ${problem}`);
  }
});

test('serve --help lists every flag of the settings table with the key it sets', (t) => {
  const help = spawnSync(process.execPath, [cliPath, 'serve', '--help'], { encoding: 'utf8' });
  t.is(help.status, 0);
  for (const setting of settings) {
    const flag = flagName(setting);
    if (flag === undefined) continue;
    t.true(help.stdout.includes(flag), `${flag} is listed`);
    t.true(help.stdout.includes(`(${setting.key})`), `${flag} names ${setting.key}`);
  }
});

test('cache.writeAroundSize: 64 KiB in the default file and when absent, 0 caches every write', (t) => {
  const base = YAML.parse(defaultConfigText()) as Record<string, Record<string, unknown>>;
  t.is(parseConfig(base, '/tmp').cache?.writeAroundBytes, 64 * 1024);
  const absent = structuredClone(base);
  delete absent.cache.writeAroundSize;
  t.is(parseConfig(absent, '/tmp').cache?.writeAroundBytes, 64 * 1024);
  const off = structuredClone(base);
  off.cache.writeAroundSize = 0;
  t.is(parseConfig(off, '/tmp').cache?.writeAroundBytes, 0);
  const large = structuredClone(base);
  large.cache.writeAroundSize = '1MiB';
  t.is(parseConfig(large, '/tmp').cache?.writeAroundBytes, 1024 * 1024);
});

test('storage.resyncRate left out of a hand-written file is the documented 256MiB; 0 and null mean unlimited', (t) => {
  const handWritten = { storage: { log: 'mirror.log', legs: [{ path: 'leg0.img' }, { path: 'leg1.img' }] } };
  t.is(parseConfig(handWritten, '/tmp').storage.resyncBytesPerSecond, 256 * 1024 * 1024);
  const fromDefault = YAML.parse(defaultConfigText()) as Record<string, Record<string, unknown>>;
  t.is(parseConfig(fromDefault, '/tmp').storage.resyncBytesPerSecond, 256 * 1024 * 1024, 'the same as the default file');
  for (const unlimited of [0, null]) {
    t.is(parseConfig({ storage: { ...handWritten.storage, resyncRate: unlimited } }, '/tmp').storage.resyncBytesPerSecond, 0);
  }
  t.is(parseConfig({ storage: { ...handWritten.storage, resyncRate: '32MiB' } }, '/tmp').storage.resyncBytesPerSecond, 32 * 1024 * 1024);
});

test('storage.checkpointGranularity: 64KiB by default, a power of two from 4KiB to 16MiB', (t) => {
  const storage = { log: 'mirror.log', legs: [{ path: 'leg0.img' }, { path: 'leg1.img' }] };
  t.is(parseConfig({ storage }, '/tmp').storage.checkpointGranularityBytes, 64 * 1024);
  t.is(parseConfig({ storage: { ...storage, checkpointGranularity: '1MiB' } }, '/tmp').storage.checkpointGranularityBytes, 1024 * 1024);
  for (const bad of ['2KiB', '96KiB', '32MiB']) {
    t.throws(() => parseConfig({ storage: { ...storage, checkpointGranularity: bad } }, '/tmp'),
      { message: /storage\.checkpointGranularity: \d+ must be a power of two from 4KiB to 16MiB/ }, bad);
  }
});
