import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import test from 'ava';
import { serverNodeFlags } from '../../sys/node-flags.js';
import { cliPath, projectRoot } from '../helpers/server-process.js';
import { makeTempDir } from '../helpers/tools.js';

const binPath = path.join(projectRoot, 'bin', 'nbd-mirror.js');
const missingFlagWarning = /node was started without --no-memory-reducer/;

/** Runs `command args serve ...` until it logs "listening", stops it with SIGTERM, and returns its log lines. */
async function serveUntilListening(dir: string, command: string, args: string[]): Promise<Array<Record<string, unknown>>> {
  const child = spawn(command, [...args, 'serve', '--listen', '127.0.0.1:0', '--no-unix', '--size', '16MiB',
    '--leg', path.join(dir, 'a.img'), path.join(dir, 'b.img'), '--log', path.join(dir, 'm.log')],
  { env: { ...process.env, NBD_MIRROR_LOG_JSON: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
  const logs: Array<Record<string, unknown>> = [];
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no "listening" in 20 s; stderr: ${stderr}`)), 20_000);
      readline.createInterface({ input: child.stdout }).on('line', (line) => {
        const entry = JSON.parse(line) as Record<string, unknown>;
        logs.push(entry);
        // The flag warning, when due, comes right after "listening"; the attach hints follow it.
        if (typeof entry.msg === 'string' && entry.msg.startsWith('attach with')) {
          clearTimeout(timer);
          resolve();
        }
      });
      void exited.then((code) => { clearTimeout(timer); reject(new Error(`exited with ${code}; stderr: ${stderr}`)); });
    });
  } finally {
    child.kill('SIGTERM');
    await exited;
  }
  return logs;
}

test('the launchers pass every flag the server needs: the bin\'s shebang and npm start', (t) => {
  const shebang = fs.readFileSync(binPath, 'utf8').split('\n')[0]!;
  const { scripts } = JSON.parse(fs.readFileSync(path.join(projectRoot, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  for (const flag of serverNodeFlags) {
    t.true(shebang.split(' ').includes(flag), `bin/nbd-mirror.js starts node with ${flag}`);
    t.true(scripts.start!.split(' ').includes(flag), `npm start starts node with ${flag}`);
  }
});

test('a server started through the bin runs with the flags; one started by plain node says what it lacks', async (t) => {
  const dir = makeTempDir('node-flags');
  try {
    const throughBin = await serveUntilListening(dir, binPath, []);
    t.false(throughBin.some((entry) => missingFlagWarning.test(String(entry.msg))), 'no warning through the bin');
    const plain = await serveUntilListening(dir, process.execPath, [cliPath]);
    const warning = plain.find((entry) => missingFlagWarning.test(String(entry.msg)));
    t.truthy(warning, 'plain node: warned');
    t.deepEqual(warning?.missing, ['--no-memory-reducer']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
