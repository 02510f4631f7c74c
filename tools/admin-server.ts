import net from 'node:net';
import { claimUnixSocketPath } from '../nbd/unix-socket-path.js';
import type { Logger } from 'pino';
import type { MirrorController } from '../mirror/controller.js';
import type { EventBus, StampedEvent } from '../observe/event-bus.js';
import { type AdminTarget, currentStateEvents, exportHealth, serverStatus } from '../observe/status-view.js';
import { sweepTopDown } from '../stack/top-down.js';

export type { AdminTarget };

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
  /** resync-rate: bytes per second, 0 for unlimited. */
  bytesPerSecond?: number;
  /** events: send the current state first (drbdsetup events2 --now). */
  now?: boolean;
  /** checkpoint-create, checkpoint-remove, backup-start, backup-stop: the checkpoint's (and backup's) name. */
  name?: string;
  /** backup-start: the checkpoint to report changes since, and the scratch space's size. */
  since?: string;
  scratchBytes?: number;
}

/** Progress lines sent while a long command runs. */
export interface AdminProgress {
  done: number;
  total: number;
  bytes?: number;
  kind?: string;
}

/** Event lines a watcher may leave unread before it is dropped. */
const eventBacklogBytesMax = 1024 * 1024;

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
  private target: AdminTarget | undefined;

  /**
   * Bound before the storage is opened (a socket in use is found before
   * anything is written); commands are answered once attach() names the target.
   */
  constructor(private readonly logger: Logger, private readonly events?: EventBus) {
    this.server = net.createServer((socket) => this.serve(socket));
  }

  attach(target: AdminTarget): void {
    this.target = target;
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
      void this.answer(socket, line).finally(() => {
        if (!this.streaming.has(socket)) socket.end();
      });
    });
  }

  private readonly streaming = new Set<net.Socket>();

  /** One JSON line per event until the client goes away (nbd-mirror events). */
  private streamEvents(socket: net.Socket, now: boolean): void {
    if (!this.events) {
      this.send(socket, { ok: false, error: 'this server reports no events' });
      return;
    }
    this.streaming.add(socket);
    // The subscriber is registered first, so no event falls between the snapshot and the stream.
    const queued: StampedEvent[] = [];
    let live = false;
    const unsubscribe = this.events.subscribe((event) => {
      if (!live) {
        queued.push(event);
        return;
      }
      // A watcher that stops reading must not grow the server's memory: past the bound it is told and dropped.
      if (socket.writableLength > eventBacklogBytesMax) {
        this.send(socket, { event: 'overflow', message: `more than ${eventBacklogBytesMax} bytes of events unread; reconnect with --now` });
        socket.end();
        unsubscribe();
        return;
      }
      this.send(socket, event as unknown as Record<string, unknown>);
    });
    socket.on('close', () => {
      unsubscribe();
      this.streaming.delete(socket);
    });
    socket.resume();
    if (now && this.target) for (const line of currentStateEvents(this.target)) this.send(socket, line);
    live = true;
    for (const event of queued) this.send(socket, event as unknown as Record<string, unknown>);
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
    if (request.command === 'events') {
      this.streamEvents(socket, request.now === true);
      return;
    }
    try {
      const result = await this.execute(request, (progress) => this.send(socket, { progress }));
      this.send(socket, { ok: true, result });
    } catch (error) {
      this.logger.warn({ command: request.command, err: (error as Error).message }, 'admin command failed');
      this.send(socket, { ok: false, error: (error as Error).message });
    }
  }

  private async execute(request: AdminRequest, progress: (progress: AdminProgress) => void): Promise<unknown> {
    const { target } = this;
    if (!target) throw new Error('the server is still starting; try again in a moment');
    const waitForSync = async (): Promise<unknown> => {
      const outcome = await controller().waitForSync((resync) => progress({ done: resync.regionsDone, total: resync.regionsTotal,
        bytes: resync.bytesCopied, kind: resync.kind }));
      return { ...this.mirrorStatus(controller()), waited: outcome };
    };
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
        return target.mirror ? this.mirrorStatus(target.mirror) : serverStatus(target);
      case 'report':
        return serverStatus(target);
      case 're-add':
        return controller().reAdd(slot(), { path: request.path, force: request.force });
      case 'replace':
        if (typeof request.path !== 'string' || request.path === '') throw new Error('replace needs the new leg path');
        return controller().replace(slot(), request.path, { force: request.force });
      case 'resync':
        return controller().fullResync();
      case 'fail':
        return controller().fail(slot());
      case 'remove':
        return controller().remove(slot());
      case 'resync-rate': {
        const rate = request.bytesPerSecond;
        if (typeof rate !== 'number' || !Number.isSafeInteger(rate) || rate < 0) throw new Error('resync-rate needs bytesPerSecond >= 0');
        return controller().setResyncRate(rate);
      }
      case 'check':
      case 'repair':
        return controller().check({ repair: request.command === 'repair' || request.repair === true,
          onProgress: (done, total) => progress({ done, total }) });
      case 'sweep':
        return sweepTopDown({ mirror: controller(), cache: target.cache }, { ignoreQuietPasses: true, logger: this.logger });
      case 'wait-resync':
        return waitForSync();
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
      case 'checkpoint-create':
      case 'checkpoint-remove':
      case 'checkpoint-list': {
        const store = target.checkpoints;
        if (!store) throw new Error(target.checkpointsUnavailable ?? 'this server has no checkpoints');
        if (request.command === 'checkpoint-list') return store.list();
        if (typeof request.name !== 'string') throw new Error(`${request.command} needs the checkpoint's name`);
        if (request.command === 'checkpoint-remove') {
          await store.remove(request.name);
          return `checkpoint ${request.name} removed`;
        }
        return store.create(request.name);
      }
      case 'backup-start':
      case 'backup-stop':
      case 'backup-list': {
        const { backups } = target;
        if (!backups) throw new Error(target.checkpointsUnavailable ?? 'this server has no checkpoints');
        if (request.command === 'backup-list') return backups.list();
        if (typeof request.name !== 'string') throw new Error(`${request.command} needs the backup's name`);
        if (request.command === 'backup-stop') return backups.stop(request.name);
        return backups.start(request.name, { since: request.since, scratchBytes: positive(request.scratchBytes) });
      }
      case 'power-cut': {
        const crashPoints = target.crashPoints;
        if (crashPoints === undefined || crashPoints.powerCuts.size === 0) throw new Error('no power-cut device is configured (storage.legs[].powerCut, storage.log.powerCut)');
        // Answer first: once the cut starts nothing is answered any more.
        setTimeout(() => void crashPoints.crashNow('power cut requested on the admin socket', 'power-cut'), 20);
        return { cutting: true };
      }
      default:
        throw new Error(`unknown command "${request.command}" (status, report, events, re-add, replace, fail, remove, resync, resync-rate, ` +
          'check, repair, sweep, wait-resync, pool-grow, cache-drop, fault, power-cut, checkpoint-create, checkpoint-list, checkpoint-remove, backup-start, backup-stop, backup-list)');
    }
  }

  /** The mirror's own status, with the cache above it (its state and failure belong to the export's health). */
  private mirrorStatus(mirror: MirrorController): Record<string, unknown> {
    const status = mirror.status();
    const { cache } = this.target!;
    return { ...status, ...exportHealth(status, cache), cache: cache?.status() };
  }
}

function positive(value: unknown): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) throw new Error(`${String(value)} is not a positive byte count`);
  return value;
}
