// Builds the optional native addon. The server works without it (see
// sys/native.ts for the fallbacks), so a missing compiler only warns.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const nativeDir = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'native');
if (process.env.NBD_MIRROR_SKIP_NATIVE === '1') {
  console.log('nbd-mirror: NBD_MIRROR_SKIP_NATIVE=1, native addon not built');
  process.exit(0);
}
// npm exports its bundled node-gyp to lifecycle scripts; fall back to PATH.
const bundled = process.env.npm_config_node_gyp;
const [command, args] = bundled ? [process.execPath, [bundled]] : ['node-gyp', []];
const result = spawnSync(command, [...args, 'rebuild', '--directory', nativeDir], { stdio: 'inherit' });
if (result.status !== 0) {
  console.warn('nbd-mirror: native addon not built (node-gyp failed); ' +
    'falling back to portable I/O: no hole punching, no SEEK_DATA block status, no NOWAIT fast path');
}
