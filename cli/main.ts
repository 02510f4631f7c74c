// The thread pool serves leg I/O and fdatasync; a few threads beat many on 2 cores.
process.env.UV_THREADPOOL_SIZE ??= '4';

import fs from 'node:fs';
import { Command } from 'commander';
import { registerServe } from './serve-command.js';
import { registerTools } from '../tools/commands.js';
import { ToolError } from '../tools/tool-error.js';

const { version } = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

const program = new Command();
program.name('nbd-mirror').description('NBD block-device server over a mirrored, crash-safe store')
  .version(version, '-V, --version', 'print the version');

registerServe(program);
registerTools(program);

program.parseAsync(process.argv).catch((error: unknown) => {
  // Operator-facing errors carry a precise message; a stack helps only when debugging.
  console.error(`nbd-mirror: ${error instanceof Error ? error.message : String(error)}`);
  if (process.env.NBD_MIRROR_DEBUG) console.error(error);
  process.exit(error instanceof ToolError ? error.exitCode : 2);
});
