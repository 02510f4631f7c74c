import net from 'node:net';
import readline from 'node:readline';
import type { AdminRequest } from './admin-server.js';

/** Sends one request to a server's admin socket; progress lines go to onProgress, the answer is returned. */
export function adminRequest(socketPath: string, request: AdminRequest,
  onProgress?: (done: number, total: number) => void, timeoutMs = 0): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    let settled = false;
    const finish = (error: Error | undefined, value?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error); else resolve(value);
    };
    const timer = timeoutMs > 0 ? setTimeout(() => finish(new Error(`no answer from ${socketPath} in ${timeoutMs} ms`)), timeoutMs) : undefined;
    socket.on('error', (error) => finish(new Error(`cannot reach the admin socket ${socketPath}: ${error.message}`)));
    socket.on('connect', () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on('close', () => finish(new Error('the server closed the admin connection without answering')));
    const lines = readline.createInterface({ input: socket });
    // The socket's own error handler reports the failure; readline re-emits it and must not crash the caller.
    lines.on('error', () => undefined);
    lines.on('line', (line) => {
      let message: { ok?: boolean; result?: unknown; error?: string; progress?: { done: number; total: number } };
      try {
        message = JSON.parse(line) as typeof message;
      } catch {
        finish(new Error(`unreadable answer: ${line.slice(0, 200)}`));
        return;
      }
      if (message.progress) onProgress?.(message.progress.done, message.progress.total);
      else if (message.ok) finish(undefined, message.result);
      else finish(new Error(message.error ?? 'command failed'));
    });
  });
}
