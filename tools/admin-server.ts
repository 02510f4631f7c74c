import net from 'node:net';
import { claimUnixSocketPath } from '../nbd/unix-socket-path.js';
import type { Logger } from 'pino';
import type { ThinLeg } from '../backends/thin-leg.js';
import { crashNow } from '../faults/crash-points.js';
import { hasPowerCutDevices } from '../faults/power-cut-device.js';
import type { MirrorController } from '../mirror/controller.js';
import type { PageCache } from '../pagecache/page-cache.js';

/** What the admin socket acts on: a mirror, or one plain leg; either may have a cache above it. */
export interface AdminTarget {
  mirror?: MirrorController;
  cache?: PageCache;
  /** A plain export's leg (slot 0), for status and pool grow. */
  plain?: { path: string; sizeBytes: number; pool?: ThinLeg };
}

export interface AdminRequest {
  command: string;
  slot?: number | 'log';
  path?: string;
  force?: boolean;
  repair?: boolean;
  action?: 'trigger' | 'heal';
  /** pool-grow: new capacity, or how much to add. */
  toBytes?: number;
  byBytes?: number;
}

/** A request line longer than this is not one of ours. */
const requestBytesMax = 64 * 1024;

/**
 * The local admin socket: one JSON request per line, answered by JSON lines
 * (progress lines, then one line with `ok`). Only the owner can connect: the
 * socket is created mode 0600.
 */
export class AdminServer {
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly target: AdminTarget, private readonly logger: Logger) {
    this.server = net.createServer((socket) => this.serve(socket));
  }

  async listen(socketPath: string): Promise<void> {
    await claimUnixSocketPath(socketPath, 'admin socket');
    const previousMask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        this.server.once('error', reject);
        this.server.listen(socketPath, () => resolve());
      });
    } finally {
      process.umask(previousMask);
    }
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private serve(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    let buffered = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      if (buffered.length > requestBytesMax) {
        this.send(socket, { ok: false, error: 'request too long' });
        socket.end();
        return;
      }
      const newline = buffered.indexOf('\n');
      if (newline < 0) return;
      const line = buffered.slice(0, newline);
      socket.pause();
      void this.answer(socket, line).finally(() => socket.end());
    });
  }

  private send(socket: net.Socket, message: Record<string, unknown>): void {
    if (!socket.destroyed) socket.write(`${JSON.stringify(message)}\n`);
  }

  private async answer(socket: net.Socket, line: string): Promise<void> {
    let request: AdminRequest;
    try {
      request = JSON.parse(line) as AdminRequest;
      if (typeof request !== 'object' || request === null || typeof request.command !== 'string') throw new Error('no command');
    } catch {
      this.send(socket, { ok: false, error: 'malformed request: expected one JSON object with a "command"' });
      return;
    }
    try {
      const result = await this.execute(request, (done, total) => this.send(socket, { progress: { done, total } }));
      this.send(socket, { ok: true, result });
    } catch (error) {
      this.logger.warn({ command: request.command, err: (error as Error).message }, 'admin command failed');
      this.send(socket, { ok: false, error: (error as Error).message });
    }
  }

  private async execute(request: AdminRequest, progress: (done: number, total: number) => void): Promise<unknown> {
    const { target } = this;
    const slot = (): number => {
      if (typeof request.slot !== 'number' || !Number.isInteger(request.slot)) throw new Error(`${request.command} needs a leg slot number`);
      return request.slot;
    };
    const controller = (): MirrorController => {
      if (!target.mirror) throw new Error(`${request.command} needs a mirror; this server exports one plain leg`);
      return target.mirror;
    };
    this.logger.info({ command: request.command, slot: request.slot, path: request.path }, 'admin command');
    switch (request.command) {
      case 'status':
        return target.mirror ? target.mirror.status() : this.plainStatus();
      case 're-add':
        return controller().reAdd(slot(), { path: request.path, force: request.force });
      case 'replace':
        if (typeof request.path !== 'string' || request.path === '') throw new Error('replace needs the new leg path');
        return controller().replace(slot(), request.path, { force: request.force });
      case 'resync':
        return controller().fullResync();
      case 'check':
      case 'repair':
        return controller().check({ repair: request.command === 'repair' || request.repair === true, onProgress: progress });
      case 'sweep':
        return controller().device.sweep({ ignoreQuietPasses: true });
      case 'wait-resync':
        await controller().resync.idle();
        return controller().status();
      case 'pool-grow': {
        const size = { toBytes: positive(request.toBytes), byBytes: positive(request.byBytes) };
        if ((size.toBytes === undefined) === (size.byBytes === undefined)) throw new Error('pool-grow needs exactly one of toBytes or byBytes');
        if (target.mirror) return target.mirror.growPool(slot(), size);
        const pool = target.plain?.pool;
        if (!pool || (request.slot ?? 0) !== 0) throw new Error('this export has no thin pool at that slot');
        return pool.grow(size);
      }
      case 'cache-drop': {
        if (!target.cache) throw new Error('this server has no cache');
        return { droppedPages: target.cache.shrink(), cache: target.cache.status() };
      }
      case 'fault': {
        const fault = request.slot === 'log' ? controller().logFault : controller().faults[slot()];
        if (!fault) throw new Error(`${request.slot === 'log' ? 'the region log' : `leg ${request.slot}`} has no fault injection configured`);
        if (request.action === 'trigger') fault.trigger();
        else if (request.action === 'heal') fault.heal();
        else throw new Error('fault needs action "trigger" or "heal"');
        return { slot: request.slot, action: request.action, injected: fault.injected };
      }
      case 'power-cut': {
        if (!hasPowerCutDevices()) throw new Error('no power-cut device is configured (storage.legs[].powerCut, storage.log.powerCut)');
        // Answer first: once the cut starts nothing is answered any more.
        setTimeout(() => void crashNow('power cut requested on the admin socket', 'power-cut'), 20);
        return { cutting: true };
      }
      default:
        throw new Error(`unknown command "${request.command}" (status, re-add, replace, resync, check, repair, sweep, wait-resync, ` +
          'pool-grow, cache-drop, fault, power-cut)');
    }
  }

  private plainStatus(): Record<string, unknown> {
    const { plain, cache } = this.target;
    const failure = cache?.failed?.message;
    return {
      kind: 'plain',
      sizeBytes: plain?.sizeBytes,
      health: failure ? 'failed' : 'optimal',
      failure,
      legs: [{ slot: 0, path: plain?.path, state: 'in_sync', pool: plain?.pool?.usage() }],
      cache: cache?.status(),
    };
  }
}

function positive(value: unknown): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) throw new Error(`${String(value)} is not a positive byte count`);
  return value;
}
