import type net from 'node:net';
import { BlockError } from '../../blockdev/errors.js';
import type { Extent } from '../../blockdev/types.js';
import { Command, commandNames as wireCommandNames, REQUEST_HEADER_BYTES, REQUEST_MAGIC, ReplyType, StateFlag } from '../../nbd/constants.js';
import type { RemoteExport } from './negotiate.js';
import { remoteError } from './remote-errors.js';
import { type AwaitedReply, ReplyParser } from './reply-parser.js';

/** The wire names (nbd/constants.ts) as messages say them: READ as read, WRITE_ZEROES as write-zeroes. */
export const commandNames: Record<number, string> = Object.fromEntries(Object.entries(wireCommandNames)
  .map(([command, name]) => [command, name.toLowerCase().replace('_', '-')]));

/** A run of one state in a metadata context's block status, within the request's range. */
export interface ContextRun {
  offsetBytes: number;
  lengthBytes: number;
  flags: number;
}

/** A request on the wire, and what its reply fills in. */
export class InFlight implements AwaitedReply {
  sentAtMs = 0;
  /** Block status of contexts other than base:allocation, by context id. */
  otherContexts: Map<number, ContextRun[]> | undefined;
  /** Failfast: unanswered this long, the connection is lost (an idle probe has a shorter deadline than a request). */
  timeoutMs = 0;
  extents: Extent[] | undefined;
  private error: { errno: number; message: string | undefined } | undefined;

  constructor(readonly command: number, readonly offsetBytes: number, readonly lengthBytes: number,
    readonly target: Buffer | undefined, private readonly settle: (error: BlockError | undefined) => void,
    /** The leg's name, for the error a failed reply becomes. */
    private readonly legName: string,
    private readonly baseAllocationId: number | undefined) {}

  /** A block status chunk of any context: its descriptors as runs from the request's offset, clipped to its range. */
  onChunk(type: number, payload: Buffer): void {
    if (type !== ReplyType.BLOCK_STATUS || payload.length < 4) return;
    const runs: ContextRun[] = [];
    let at = this.offsetBytes;
    const end = this.offsetBytes + this.lengthBytes;
    for (let index = 4; index + 8 <= payload.length && at < end; index += 8) {
      const length = Math.min(payload.readUInt32BE(index), end - at);
      if (length === 0) break;
      runs.push({ offsetBytes: at, lengthBytes: length, flags: payload.readUInt32BE(index + 4) });
      at += length;
    }
    if (runs.length === 0) return;
    const contextId = payload.readUInt32BE(0);
    if (contextId !== this.baseAllocationId) {
      (this.otherContexts ??= new Map()).set(contextId, runs);
      return;
    }
    this.extents = runs.map((run) => ({ offsetBytes: run.offsetBytes, lengthBytes: run.lengthBytes,
      hole: (run.flags & StateFlag.HOLE) !== 0, zero: (run.flags & StateFlag.ZERO) !== 0 }));
  }

  onError(errno: number, message: string | undefined): void {
    this.error ??= { errno, message };
  }

  onDone(errno: number): void {
    if (errno !== 0) this.error ??= { errno, message: undefined };
    this.settle(this.error ? remoteError(this.error.errno, this.error.message,
      `${commandNames[this.command]} of ${this.lengthBytes} bytes at ${this.offsetBytes}`, this.legName) : undefined);
  }

  fail(error: BlockError): void {
    this.settle(error);
  }
}

interface Queued {
  bytes: number;
  start: () => void;
}

export interface ConnectionLimits {
  /** The leg's name and address, for messages. */
  name: string;
  uri: string;
  requestTimeoutMs: number;
  requestsInFlightMax: number;
  bytesInFlightMax: number;
}

/**
 * One negotiated connection in transmission: requests pipelined, matched to
 * replies by cookie, bounded in count and bytes, and failed fast when the
 * remote stops answering. Losing it fails everything on it with EIO.
 */
export class RemoteConnection {
  /** Why the connection ended (undefined while it works). */
  lostReason: string | undefined;
  private readonly socket: net.Socket;
  private readonly parser: ReplyParser;
  private readonly inFlight = new Map<bigint, InFlight>();
  private readonly queue: Queued[] = [];
  private nextCookie = 1n;
  private bytesInFlight = 0;
  private readonly timer: NodeJS.Timeout;
  private closing = false;
  private readonly drainWaiters: Array<() => void> = [];
  /** Deadline ticks in a row with nothing in flight and nothing sent (see probeIfIdle). */
  private idleTicks = 0;
  private cookieAtLastTick = 0n;
  private readonly tickMs: number;
  private corked = false;
  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  constructor(private readonly remote: RemoteExport, private readonly limits: ConnectionLimits,
    private readonly onLost: (reason: string) => void) {
    this.socket = remote.socket;
    this.parser = new ReplyParser((cookie) => this.inFlight.get(cookie), (cookie) => this.retire(cookie));
    this.socket.setKeepAlive(true, 5000);
    this.socket.on('data', (chunk: Buffer) => {
      try {
        this.parser.push(chunk);
      } catch (error) {
        this.lose((error as Error).message);
      }
    });
    this.socket.on('error', (error) => this.lose(`connection error: ${error.message}`));
    this.socket.on('close', () => this.lose('the remote closed the connection'));
    this.socket.resume();
    this.tickMs = Math.max(20, Math.floor(limits.requestTimeoutMs / 10));
    this.timer = setInterval(() => this.tick(), this.tickMs);
    this.timer.unref();
    // After the timer exists, so losing the connection here stops it too.
    if (remote.leftover.length > 0) this.lose(`the remote sent ${remote.leftover.length} bytes no request asked for`);
  }

  /** Requests in flight or waiting for room: the leg sends a new one on its least busy connection. */
  get load(): number {
    return this.inFlight.size + this.queue.length;
  }

  /** Sends one request when the in-flight bounds allow; resolves with it once its reply is complete. */
  send(command: number, flags: number, offsetBytes: number, lengthBytes: number,
    payload: Buffer | undefined, target: Buffer | undefined, timeoutMs = this.limits.requestTimeoutMs): Promise<InFlight> {
    if (this.lostReason !== undefined || this.closing) return Promise.reject(this.notConnected());
    const bytes = (payload?.length ?? 0) + (target?.length ?? 0);
    return new Promise<InFlight>((resolve, reject) => {
      const start = (): void => {
        if (this.lostReason !== undefined) {
          reject(this.notConnected());
          return;
        }
        const cookie = this.nextCookie;
        this.nextCookie += 1n;
        const request: InFlight = new InFlight(command, offsetBytes, lengthBytes, target, (error) => {
          if (error) reject(error);
          else resolve(request);
        }, this.limits.name, this.remote.baseAllocationId);
        request.sentAtMs = Date.now();
        request.timeoutMs = timeoutMs;
        this.inFlight.set(cookie, request);
        this.bytesInFlight += bytes;
        const header = Buffer.allocUnsafe(REQUEST_HEADER_BYTES);
        header.writeUInt32BE(REQUEST_MAGIC, 0);
        header.writeUInt16BE(flags, 4);
        header.writeUInt16BE(command, 6);
        header.writeBigUInt64BE(cookie, 8);
        header.writeBigUInt64BE(BigInt(offsetBytes), 16);
        header.writeUInt32BE(lengthBytes, 24);
        // Requests sent in one turn of the loop leave in one writev: corked at the first, uncorked after the turn.
        if (!this.corked) {
          this.corked = true;
          this.socket.cork();
          process.nextTick(this.uncork);
        }
        this.socket.write(header);
        if (payload) this.socket.write(payload);
      };
      if (this.queue.length === 0 && this.hasRoom(bytes)) start();
      else this.queue.push({ bytes, start });
    });
  }

  /** Lets what was sent finish (or fail fast), then says goodbye. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.inFlight.size > 0 || this.queue.length > 0) await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
    clearInterval(this.timer);
    if (this.lostReason === undefined) {
      const disconnect = Buffer.alloc(REQUEST_HEADER_BYTES);
      disconnect.writeUInt32BE(REQUEST_MAGIC, 0);
      disconnect.writeUInt16BE(Command.DISC, 6);
      await new Promise<void>((resolve) => this.socket.end(disconnect, resolve));
    }
    this.lostReason ??= 'closed';
    this.socket.destroy();
  }

  /** The connection is gone: every request in flight or waiting fails with EIO, and so does every later one. */
  lose(reason: string): void {
    if (this.lostReason !== undefined) return;
    this.lostReason = reason;
    clearInterval(this.timer);
    this.socket.destroy();
    const error = new BlockError('EIO', `${this.limits.name}: ${this.limits.uri}: ${reason}`);
    const requests = [...this.inFlight.values()];
    this.inFlight.clear();
    this.bytesInFlight = 0;
    for (const request of requests) request.fail(error);
    for (const queued of this.queue.splice(0)) queued.start();
    this.notifyIfDrained();
    if (!this.closing) this.onLost(reason);
  }

  private notConnected(): BlockError {
    return new BlockError('EIO', `${this.limits.name}: ${this.limits.uri} is not connected (${this.lostReason ?? 'closing'})`);
  }

  private hasRoom(bytes: number): boolean {
    // One request always fits when nothing is in flight, whatever its size.
    return this.inFlight.size === 0
      || (this.inFlight.size < this.limits.requestsInFlightMax && this.bytesInFlight + bytes <= this.limits.bytesInFlightMax);
  }

  private retire(cookie: bigint): void {
    const request = this.inFlight.get(cookie);
    if (!request) return;
    this.inFlight.delete(cookie);
    this.bytesInFlight -= (request.target?.length ?? 0) + (request.command === Command.WRITE ? request.lengthBytes : 0);
    while (this.queue.length > 0 && this.hasRoom(this.queue[0].bytes)) this.queue.shift()!.start();
    this.notifyIfDrained();
  }

  private notifyIfDrained(): void {
    if (this.inFlight.size === 0 && this.queue.length === 0) for (const resolve of this.drainWaiters.splice(0)) resolve();
  }

  private tick(): void {
    this.probeIfIdle();
    this.checkDeadlines();
  }

  /**
   * NBD has no ping, and a remote that dies while we send nothing (a host
   * gone without a FIN or RST, a link that went silent) would otherwise be
   * noticed only by the next write, and status would say "connected" until
   * then. After about 0.3 of the failfast time with nothing in flight and
   * nothing sent, a one-block read is sent with half the failfast time to
   * answer: silence is then noticed within the failfast time, as it is under
   * load. Idleness is counted in timer ticks from the cookie counter, so the
   * request path pays nothing for it. A reply with an error still proves
   * the link alive; only silence or a broken connection loses it.
   */
  private probeIfIdle(): void {
    if (this.closing || this.inFlight.size > 0 || this.queue.length > 0 || this.nextCookie !== this.cookieAtLastTick) {
      this.cookieAtLastTick = this.nextCookie;
      this.idleTicks = 0;
      return;
    }
    this.idleTicks += 1;
    if (this.idleTicks * this.tickMs < this.limits.requestTimeoutMs * 0.3) return;
    this.idleTicks = 0;
    const blockBytes = Math.max(512, this.remote.minimumBlockBytes);
    this.send(Command.READ, 0, 0, blockBytes, undefined, Buffer.allocUnsafe(blockBytes), Math.floor(this.limits.requestTimeoutMs / 2))
      .catch(() => undefined);
    this.cookieAtLastTick = this.nextCookie;
  }

  private checkDeadlines(): void {
    const oldest = this.inFlight.values().next();
    if (oldest.done || Date.now() - oldest.value.sentAtMs < oldest.value.timeoutMs) return;
    // Timers run before the loop polls sockets: after our own process stalled (a busy loop, a starved CPU), the reply
    // may be waiting unread. The verdict waits until the poll phase has run once, so only the remote's silence counts.
    const suspect = oldest.value;
    setImmediate(() => {
      if (this.lostReason !== undefined || this.inFlight.values().next().value !== suspect) return;
      this.lose(`no reply to a ${commandNames[suspect.command]}${suspect.timeoutMs < this.limits.requestTimeoutMs ? ' (idle probe)' : ''} ` +
        `within ${suspect.timeoutMs} ms (failfast)`);
    });
  }
}
