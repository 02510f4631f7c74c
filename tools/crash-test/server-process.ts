import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { serverNodeFlags } from '../../sys/node-flags.js';

export const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const cliPath = path.join(projectRoot, 'dist', 'cli', 'main.js');

export interface ServerProcess {
  child: ChildProcess;
  pid: number;
  port: number;
  unixPath: string | undefined;
  /** Every JSON log line seen so far. */
  logs: Array<Record<string, unknown>>;
  uri(exportName?: string): string;
  /** SIGTERM and wait for exit; returns the exit code. */
  stop(timeoutMs?: number): Promise<number | null>;
  /** SIGKILL, as a crash would. */
  kill(): Promise<void>;
  exited: Promise<number | null>;
}

/**
 * Starts `nbd-mirror serve` on 127.0.0.1 with a free port and waits for its
 * "listening" log line. Only this process (by PID) is ever signalled.
 */
export async function startServerProcess(args: string[],
  options: { env?: NodeJS.ProcessEnv; readyTimeoutMs?: number; cwd?: string; /** another build's dist/cli/main.js (bench:compare) */ cli?: string;
    /** The command and its arguments before `serve`; default: node with the server's flags and the CLI. */ launcher?: string[] } = {}):
  Promise<ServerProcess> {
  const [command, ...launcherArgs] = options.launcher ?? [process.execPath, ...serverNodeFlags, options.cli ?? cliPath];
  const child = spawn(command!, [...launcherArgs, 'serve', '--listen', '127.0.0.1:0', ...args], {
    env: { ...process.env, NBD_MIRROR_LOG_JSON: '1', ...options.env },
    cwd: options.cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Array<Record<string, unknown>> = [];
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const lines = readline.createInterface({ input: child.stdout! });
  const ready = new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server not ready in time; stderr: ${stderr}`)),
      options.readyTimeoutMs ?? 20_000);
    lines.on('line', (line) => {
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      logs.push(entry);
      if (entry.msg === 'listening') {
        clearTimeout(timer);
        resolve(entry);
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening; stderr: ${stderr}`));
    });
  });
  const listening = await ready;
  const tcp = listening.tcp as { port: number };
  const unixPath = listening.unix as string | undefined;
  return {
    child,
    pid: child.pid!,
    port: tcp.port,
    unixPath,
    logs,
    exited,
    uri: (exportName = '') => `nbd://127.0.0.1:${tcp.port}/${encodeURIComponent(exportName)}`,
    stop: async (timeoutMs = 30_000) => {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
    kill: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** Peak resident memory of a running process, from /proc (kernel's high-water mark). */
export function peakRssBytes(pid: number): number | undefined {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const match = /VmHWM:\s+(\d+) kB/.exec(status);
    return match ? Number(match[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}
