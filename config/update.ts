import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';

/**
 * Changes storage.legs[slot].path in a configuration file and nothing else:
 * the new path is spliced into the original text where the old value stood,
 * so comments, alignment and every other line stay as the user wrote them.
 * A path is written relative to the file's folder when the old one was
 * relative (the folder can still be moved). The previous file is kept as
 * FILE.bak; the new one replaces it atomically.
 */
export function recordLegPath(file: string, slot: number, legPath: string): { written: string; backup: string } {
  const text = fs.readFileSync(file, 'utf8');
  const document = YAML.parseDocument(text, { keepSourceTokens: true });
  const node = document.getIn(['storage', 'legs', slot, 'path'], true);
  if (!YAML.isScalar(node) || !node.range) throw new Error(`${file}: storage.legs[${slot}].path is not a plain value; edit it by hand`);
  const old = String(node.value);
  const written = path.isAbsolute(old) ? legPath : path.relative(path.dirname(path.resolve(file)), legPath) || '.';
  const rendered = /^[\w./@+-]+$/.test(written) ? written : JSON.stringify(written);
  const [start, valueEnd] = node.range;
  const updated = text.slice(0, start) + rendered + text.slice(valueEnd);
  const backup = `${file}.bak`;
  fs.copyFileSync(file, backup);
  const temporary = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(temporary, updated, { mode: fs.statSync(file).mode & 0o777 });
  fs.renameSync(temporary, file);
  return { written, backup };
}
