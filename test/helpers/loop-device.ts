import fs from 'node:fs';
import path from 'node:path';
import { run, runOk } from './tools.js';

/** A loop device over a new sparse file `dir/NAME.img`: a real block device for a test (needs root). */
export async function makeLoopDevice(dir: string, name: string, bytes: number): Promise<string> {
  const backing = path.join(dir, `${name}.img`);
  fs.writeFileSync(backing, '');
  fs.truncateSync(backing, bytes);
  return (await runOk('losetup', ['--find', '--show', backing])).stdout.trim();
}

export async function detachLoopDevices(devices: string[]): Promise<void> {
  for (const device of devices) await run('losetup', ['-d', device]);
}
