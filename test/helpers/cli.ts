import path from 'node:path';
import { cliPath, projectRoot } from './server-process.js';
import { run } from './tools.js';

/** The python workload that hammers overlapping blocks (test/python/hammer.py). */
export const hammerScript = path.join(projectRoot, 'test', 'python', 'hammer.py');

/** Runs `nbd-mirror ARGS...` as an operator would; never throws on a non-zero exit. */
export function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return run(process.execPath, [cliPath, ...args], { timeoutMs: 60_000 });
}
