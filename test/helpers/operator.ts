import fs from 'node:fs';
import path from 'node:path';
import { cli } from './cli.js';
import { type ServerProcess, startServerProcess } from './server-process.js';

/** A configuration file for a small two-leg mirror in `dir`, as an operator would write one (relative paths, comments). */
export function writeMirrorConfig(dir: string, extra = ''): string {
  const file = path.join(dir, 'config.yaml');
  fs.writeFileSync(file, `# a small mirror for a test
listen:
  unix: nbd.sock       # beside this file
  admin: admin.sock
storage:
  sizeBytes: 64MiB
  regionSize: 1MiB
  log: mirror.log      # the dirty-region log
  legs:
    - path: leg0.img   # first leg
    - path: leg1.img   # second leg
${extra}`);
  return file;
}

/** Starts `serve -c dir/config.yaml` (writing the file first unless it exists). */
export async function startConfiguredMirror(dir: string, args: string[] = [], extra = ''): Promise<ServerProcess> {
  const file = path.join(dir, 'config.yaml');
  if (!fs.existsSync(file)) writeMirrorConfig(dir, extra);
  return startServerProcess(['-c', file, ...args]);
}

/** `nbd-mirror ARGS -c dir/config.yaml`, parsed as JSON when --json is among the args. */
export async function tool(dir: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string; json?: unknown }> {
  const result = await cli([...args, '-c', path.join(dir, 'config.yaml')]);
  return { ...result, json: args.includes('--json') && result.stdout.trim().startsWith('{') ? JSON.parse(result.stdout) as unknown : undefined };
}

/** Every file under `dir` (relative paths), for "nothing was created" checks. */
export function filesUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((entry) => !fs.statSync(path.join(dir, entry)).isDirectory()).sort();
}
