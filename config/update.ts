import fs from 'node:fs';
import YAML from 'yaml';

/** Rewrites storage.legs[slot].path in a configuration file, keeping its comments and layout. */
export function recordLegPath(file: string, slot: number, legPath: string): void {
  const document = YAML.parseDocument(fs.readFileSync(file, 'utf8'));
  document.setIn(['storage', 'legs', slot, 'path'], legPath);
  const temporary = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(temporary, document.toString());
  fs.renameSync(temporary, file);
}
