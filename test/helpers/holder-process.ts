import { spawn } from 'node:child_process';

export interface Holder {
  /** SIGKILL (as a crash would end it) and wait for the exit. */
  stop(): Promise<void>;
}

/**
 * Another process holding something (a file lock, a device claim) until it
 * is stopped: `script` (ESM, run by `node -e` with `args`) takes it and prints
 * "ready". Rejects with the child's stderr if it exits first, and kills it if
 * it is not ready within 10 s; it ends itself after 60 s in any case.
 */
export async function startHolder(script: string, args: string[]): Promise<Holder> {
  const child = spawn(process.execPath, ['--input-type=module', '-e', `${script}\nsetTimeout(() => process.exit(3), 60_000);`, ...args],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  };
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the holder was not ready within 10 s')), 10_000);
      child.stdout.on('data', (chunk: Buffer) => {
        if (chunk.toString().includes('ready')) { clearTimeout(timer); resolve(); }
      });
      void exited.then((code) => { clearTimeout(timer); reject(new Error(`the holder exited ${code}: ${stderr}`)); });
    });
  } catch (error) {
    await stop();
    throw error;
  }
  return { stop };
}
