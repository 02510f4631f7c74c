// Makes a fresh clone runnable: installs npm dependencies (building the native
// addon), compiles TypeScript, and with --test-tools installs the Debian
// tools the tests drive (when root and missing). Only Node built-ins here:
// this runs before node_modules exists.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const wantTestTools = process.argv.includes('--test-tools');

function run(command, args, options = {}) {
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit', ...options });
  if (result.status !== 0) {
    console.error(`bootstrap: ${command} ${args.join(' ')} failed (exit ${result.status})`);
    process.exit(1);
  }
}

function dependenciesCurrent() {
  const installed = path.join(root, 'node_modules', '.package-lock.json');
  if (!fs.existsSync(installed)) return false;
  return fs.statSync(installed).mtimeMs >= fs.statSync(path.join(root, 'package-lock.json')).mtimeMs;
}

// The addon is rebuilt when its source changed since it was built: an old
// binary lacks the calls newer code looks for (which then falls back, slower).
function nativeCurrent() {
  const binary = path.join(root, 'native', 'build', 'Release', 'nbd_native.node');
  if (!fs.existsSync(binary)) return false;
  return fs.statSync(binary).mtimeMs >= fs.statSync(path.join(root, 'native', 'nbd_native.c')).mtimeMs;
}

if (!dependenciesCurrent()) run('npm', ['ci', '--no-audit', '--no-fund']);
else if (!nativeCurrent()) run('npm', ['run', 'install']);
run(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', root]);

// tsc never deletes: a module that moved leaves its old output behind, and a
// test that still names the old path passes here but fails on a clean clone.
function pruneStaleOutputs(dir) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const output = path.join(dir, entry.name);
    if (entry.isDirectory()) { pruneStaleOutputs(output); continue; }
    const match = /^(.*)\.(js|js\.map|d\.ts)$/.exec(entry.name);
    if (!match) continue;
    const source = path.join(root, path.relative(path.join(root, 'dist'), dir), `${match[1]}.ts`);
    if (!fs.existsSync(source)) fs.rmSync(output);
  }
}
if (fs.existsSync(path.join(root, 'dist'))) pruneStaleOutputs(path.join(root, 'dist'));

// Each tool the tests run, and the Debian package that provides it.
const testTools = [
  ['nbdinfo', 'libnbd-bin'], ['nbdcopy', 'libnbd-bin'], ['nbdsh', 'libnbd-bin'], ['nbdfuse', 'libnbd-bin'],
  ['qemu-img', 'qemu-utils'], ['qemu-io', 'qemu-utils'], ['fio', 'fio'], ['mkfs.ext4', 'e2fsprogs'],
  ['e2fsck', 'e2fsprogs'], ['fusermount3', 'fuse3'], ['losetup', 'mount'], ['nbdkit', 'nbdkit'],
  ['qemu-system-x86_64', 'qemu-system-x86'], ['cpio', 'cpio'],
  // TLS tests make their certificates and PSK keys with GnuTLS's tools, as nbdkit's and qemu's docs do.
  ['certtool', 'gnutls-bin'], ['psktool', 'gnutls-bin'],
  // The kernel client's userspace negotiator; the TLS tests run its STARTTLS (the host has no nbd.ko to attach).
  ['nbd-client', 'nbd-client'],
  // Remote legs are tested against each standard NBD server, not only our own.
  ['qemu-nbd', 'qemu-utils'], ['nbd-server', 'nbd-server'],
];

function hasCommand(name) {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

/** Python modules the tests import, and the Debian package of each. */
const pythonModules = [['nbd', 'nbd.NBD', 'python3-libnbd'],
  ['prometheus_client.parser', 'prometheus_client.parser.text_string_to_metric_families', 'python3-prometheus-client']];

function hasPythonModule(module, attribute) {
  // Isolated (-I) and from /: the project's own nbd/ folder would otherwise pass for the module.
  return spawnSync('/usr/bin/python3', ['-I', '-c', `import ${module}; ${attribute}`], { stdio: 'ignore', cwd: '/' }).status === 0;
}


/** Files the benchmark needs (the C reference mirror is an nbdkit plugin built from bench/c-mirror). */
const testFiles = [['/usr/include/nbdkit-plugin.h', 'nbdkit-plugin-dev']];

if (wantTestTools) {
  const missing = new Set(testTools.filter(([tool]) => !hasCommand(tool)).map(([, pkg]) => pkg));
  for (const [file, pkg] of testFiles) if (!fs.existsSync(file)) missing.add(pkg);
  for (const [module, attribute, pkg] of pythonModules) if (!hasPythonModule(module, attribute)) missing.add(pkg);
  if (missing.size > 0) {
    const packages = [...missing].sort();
    if (process.getuid?.() === 0) {
      console.log(`bootstrap: installing test tools: ${packages.join(' ')}`);
      const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
      run('apt-get', ['update', '-qq'], { env });
      run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...packages], { env });
    } else {
      console.error(`bootstrap: missing test tools (run as root to install): apt-get install -y ${packages.join(' ')}`);
      process.exit(1);
    }
  }
  try {
    execFileSync('modprobe', ['loop'], { stdio: 'ignore' });
  } catch {
    // Built in, or not needed: the ext4 test reports it if loop devices are missing.
  }
}
