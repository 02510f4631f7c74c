import net from 'node:net';
import readline from 'node:readline';
import type { AdminProgress, AdminRequest } from './admin-server.js';

/** Sends one request to a server's admin socket; progress lines go to onProgress, the answer is returned. */
export function adminRequest(socketPath: string, request: AdminRequest,
  onProgress?: (progress: AdminProgress) => void, timeoutMs = 0): Promise<unknown> {
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
      let message: { ok?: boolean; result?: unknown; error?: string; progress?: AdminProgress };
      try {
        message = JSON.parse(line) as typeof message;
      } catch {
        finish(new Error(`unreadable answer: ${line.slice(0, 200)}`));
        return;
      }
      if (message.progress) onProgress?.(message.progress);
      else if (message.ok) finish(undefined, message.result);
      else finish(new Error(message.error ?? 'command failed'));
    });
  });
}

/**
 * Streams one JSON object per line from a request that does not end
 * (events); resolves when the server closes the connection.
 */
export function adminStream(socketPath: string, request: AdminRequest, onLine: (message: Record<string, unknown>) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    socket.on('error', (error) => reject(new Error(`cannot reach the admin socket ${socketPath}: ${error.message}`)));
    socket.on('connect', () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on('close', () => resolve());
    const lines = readline.createInterface({ input: socket });
    lines.on('error', () => undefined);
    lines.on('line', (line) => {
      let message: Record<string, unknown>;
      try {
        message = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      if (message.ok === false) {
        reject(new Error(String(message.error)));
        socket.destroy();
        return;
      }
      onLine(message);
    });
  });
}
