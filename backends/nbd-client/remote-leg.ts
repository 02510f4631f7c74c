import type net from 'node:net';
import type tls from 'node:tls';
import { BlockError } from '../../blockdev/errors.js';
import type { BlockDevice, DeviceCapabilities, Extent, WriteFlags, ZeroFlags } from '../../blockdev/types.js';
import { Command, CommandFlag, commandNames as wireCommandNames, REQUEST_HEADER_BYTES, REQUEST_MAGIC, ReplyType, StateFlag, TransmissionFlag } from '../../nbd/constants.js';
import { clientTlsOptions } from './client-tls.js';
import { hasFlag, negotiate, NegotiationError, type RemoteExport } from './negotiate.js';
import type { NbdAddress } from './nbd-uri.js';
import { remoteError } from './remote-errors.js';
import { type AwaitedReply, ReplyParser } from './reply-parser.js';

export interface RemoteLegOptions {
  address: NbdAddress;
  /** The leg's name in messages (leg1). */
  name: string;
  /**
   * Failfast: a request unanswered this long ends the connection and fails
   * every request on it with EIO, which fails the leg (the mirror completes
   * the request on its other legs). Well under the kernel client's 30 s.
   */
  requestTimeoutMs?: number;
  connectTimeoutMs?: number;
  /** Expose only the first bytes: the leg's label sits at the export's end. */
  usableSizeBytes?: number;
  requestsInFlightMax?: number;
  bytesInFlightMax?: number;
  /** Only read (offline check): a read-only export is then accepted, and the device refuses writes. */
  readOnly?: boolean;
}

export const remoteLegDefaults = { requestTimeoutMs: 10_000, connectTimeoutMs: 10_000 } as const;

/** A request on the wire, and what its reply fills in. */
class InFlight implements AwaitedReply {
  sentAtMs = 0;
  extents: Extent[] | undefined;
  private error: { errno: number; message: string | undefined } | undefined;

  constructor(readonly command: number, readonly offsetBytes: number, readonly lengthBytes: number,
    readonly target: Buffer | undefined, private readonly settle: (error: BlockError | undefined) => void,
    /** The leg's name, for the error a failed reply becomes. */
    private readonly legName: string,
    private readonly baseAllocationId: number | undefined) {}

  onChunk(type: number, payload: Buffer): void {
    if (type !== ReplyType.BLOCK_STATUS || payload.length < 4 || payload.readUInt32BE(0) !== this.baseAllocationId) return;
    const extents: Extent[] = [];
    let at = this.offsetBytes;
    const end = this.offsetBytes + this.lengthBytes;
    for (let index = 4; index + 8 <= payload.length && at < end; index += 8) {
      const length = Math.min(payload.readUInt32BE(index), end - at);
      const flags = payload.readUInt32BE(index + 4);
      if (length === 0) break;
      extents.push({ offsetBytes: at, lengthBytes: length, hole: (flags & StateFlag.HOLE) !== 0, zero: (flags & StateFlag.ZERO) !== 0 });
      at += length;
    }
    if (extents.length > 0) this.extents = extents;
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

/** The wire names (nbd/constants.ts) as messages say them: READ as read, WRITE_ZEROES as write-zeroes. */
const commandNames: Record<number, string> = Object.fromEntries(Object.entries(wireCommandNames)
  .map(([command, name]) => [command, name.toLowerCase().replace('_', '-')]));
const zeroChunkBytes = 1024 * 1024;
/** Trim, zeroing and block status are sent in pieces no longer than this (the length field is 32 bits). */
const rangeCommandBytesMax = 1024 * 1024 * 1024;

/**
 * A mirror leg that is an export on another NBD server (nbd-mirror, nbdkit,
 * qemu-nbd, nbd-server). Requests are pipelined on one connection, matched
 * to replies by cookie, and bounded in count and bytes. What the remote
 * lacks is done another way so every leg reads the same bytes: FUA as write
 * then flush, write-zeroes as written zeroes, and trim always as
 * write-zeroes (a trimmed range on an NBD server reads back as whatever that
 * server likes; our other legs read zeroes).
 */
export class RemoteLeg implements BlockDevice {
  readonly sizeBytes: number;
  readonly blockSizeBytes: number;
  readonly capabilities: DeviceCapabilities;
  /** Why the connection ended (undefined while it works); every request fails with it from then on. */
  lostReason: string | undefined;
  private readonly socket: net.Socket;
  private readonly parser: ReplyParser;
  private readonly inFlight = new Map<bigint, InFlight>();
  private readonly queue: Queued[] = [];
  private nextCookie = 1n;
  private bytesInFlight = 0;
  private readonly timer: NodeJS.Timeout;
  private closing = false;
  private readonly requestTimeoutMs: number;
  private readonly requestsInFlightMax: number;
  private readonly bytesInFlightMax: number;
  private readonly lostListeners: Array<(reason: string) => void> = [];
  private readonly drainWaiters: Array<() => void> = [];
  private corked = false;
  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  private constructor(private readonly options: RemoteLegOptions, private readonly remote: RemoteExport) {
    this.requestTimeoutMs = options.requestTimeoutMs ?? remoteLegDefaults.requestTimeoutMs;
    this.requestsInFlightMax = options.requestsInFlightMax ?? 64;
    this.bytesInFlightMax = options.bytesInFlightMax ?? 64 * 1024 * 1024;
    this.sizeBytes = options.usableSizeBytes ?? remote.sizeBytes;
    this.blockSizeBytes = Math.max(512, remote.minimumBlockBytes);
    this.capabilities = {
      readOnly: options.readOnly ?? false, flush: true, fua: true, trim: true, writeZeroes: true,
      fastZero: hasFlag(remote.flags, TransmissionFlag.SEND_WRITE_ZEROES) && hasFlag(remote.flags, TransmissionFlag.SEND_FAST_ZERO),
      blockStatus: remote.baseAllocationId !== undefined,
      // Every request of ours goes through this one connection, so our flush covers all of them.
      multiConn: true,
      rotational: hasFlag(remote.flags, TransmissionFlag.ROTATIONAL),
    };
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
    this.timer = setInterval(() => this.checkDeadlines(), Math.max(20, Math.floor(this.requestTimeoutMs / 5)));
    this.timer.unref();
    // After the timer exists, so losing the connection here stops it too.
    if (remote.leftover.length > 0) this.lose(`the remote sent ${remote.leftover.length} bytes no request asked for`);
  }

  /** Connects and negotiates; refuses a remote that cannot hold a leg (read-only, no flush, too small). */
  static async connect(options: RemoteLegOptions, tlsOptions?: tls.ConnectionOptions): Promise<RemoteLeg> {
    const { address } = options;
    const credentials = address.tls ? tlsOptions ?? clientTlsOptions(address) : undefined;
    const remote = await negotiate(address, credentials, { connectTimeoutMs: options.connectTimeoutMs ?? remoteLegDefaults.connectTimeoutMs });
    const refuse = (problem: string): never => {
      remote.socket.destroy();
      throw new NegotiationError(address.uri, problem);
    };
    if (hasFlag(remote.flags, TransmissionFlag.READ_ONLY) && !options.readOnly) refuse('the export is read-only; a leg must be writable');
    if (!hasFlag(remote.flags, TransmissionFlag.SEND_FLUSH)) {
      refuse('the server does not offer flush, so nothing written there could be promised durable');
    }
    if (options.usableSizeBytes !== undefined && remote.sizeBytes < options.usableSizeBytes) {
      refuse(`the export is ${remote.sizeBytes} bytes, smaller than the ${options.usableSizeBytes} it must hold`);
    }
    return new RemoteLeg(options, remote);
  }

  get uri(): string {
    return this.options.address.uri;
  }

  /** The export's whole size (the label sits in its last bytes). */
  get exportSizeBytes(): number {
    return this.remote.sizeBytes;
  }

  /** What the remote offers, for status and messages. */
  get remoteFlags(): { fua: boolean; writeZeroes: boolean; trim: boolean; structuredReplies: boolean; minimumBlockBytes: number } {
    const flags = this.remote.flags;
    return {
      fua: hasFlag(flags, TransmissionFlag.SEND_FUA), writeZeroes: hasFlag(flags, TransmissionFlag.SEND_WRITE_ZEROES),
      trim: hasFlag(flags, TransmissionFlag.SEND_TRIM), structuredReplies: this.remote.structuredReplies,
      minimumBlockBytes: this.remote.minimumBlockBytes,
    };
  }

  /** Called once when the connection is lost (timeout, reset, protocol violation), not on close(). */
  onLost(listener: (reason: string) => void): void {
    this.lostListeners.push(listener);
  }

  async read(offsetBytes: number, target: Buffer): Promise<void> {
    const pieces: Array<Promise<unknown>> = [];
    for (let at = 0; at < target.length; at += this.remote.maximumBlockBytes) {
      const piece = target.subarray(at, Math.min(target.length, at + this.remote.maximumBlockBytes));
      pieces.push(this.send(Command.READ, 0, offsetBytes + at, piece.length, undefined, piece));
    }
    await Promise.all(pieces);
  }

  /** The exported range plus the label beyond it: label I/O goes here, data I/O through read. */
  async readRaw(offsetBytes: number, target: Buffer): Promise<void> {
    await this.send(Command.READ, 0, offsetBytes, target.length, undefined, target);
  }

  async writeRaw(offsetBytes: number, data: Buffer): Promise<void> {
    await this.write(offsetBytes, data, { fua: true });
  }

  async write(offsetBytes: number, data: Buffer, flags: WriteFlags): Promise<void> {
    const nativeFua = flags.fua && hasFlag(this.remote.flags, TransmissionFlag.SEND_FUA);
    const pieces: Array<Promise<unknown>> = [];
    for (let at = 0; at < data.length; at += this.remote.maximumBlockBytes) {
      const piece = data.subarray(at, Math.min(data.length, at + this.remote.maximumBlockBytes));
      pieces.push(this.send(Command.WRITE, nativeFua ? CommandFlag.FUA : 0, offsetBytes + at, piece.length, piece, undefined));
    }
    await Promise.all(pieces);
    if (flags.fua && !nativeFua) await this.flush();
  }

  async flush(): Promise<void> {
    await this.send(Command.FLUSH, 0, 0, 0, undefined, undefined);
  }

  trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void> {
    return this.zero(offsetBytes, lengthBytes, { fua: flags.fua, noHole: false, fast: false });
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    return this.zero(offsetBytes, lengthBytes, flags);
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    const length = Math.min(lengthBytes, rangeCommandBytesMax);
    if (this.remote.baseAllocationId === undefined) return [{ offsetBytes, lengthBytes, hole: false, zero: false }];
    const request = await this.send(Command.BLOCK_STATUS, 0, offsetBytes, length, undefined, undefined);
    return request.extents ?? [{ offsetBytes, lengthBytes: length, hole: false, zero: false }];
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    // Requests already sent finish (or fail fast) first; the deadline timer keeps running until then.
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

  private async zero(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    if (hasFlag(this.remote.flags, TransmissionFlag.SEND_WRITE_ZEROES)) {
      if (flags.fast && !this.capabilities.fastZero) throw new BlockError('ENOTSUP', `${this.options.name}: the remote cannot zero fast`);
      const commandFlags = (flags.noHole ? CommandFlag.NO_HOLE : 0) | (flags.fast ? CommandFlag.FAST_ZERO : 0)
        | (flags.fua && hasFlag(this.remote.flags, TransmissionFlag.SEND_FUA) ? CommandFlag.FUA : 0);
      const pieces: Array<Promise<unknown>> = [];
      for (let at = 0; at < lengthBytes; at += rangeCommandBytesMax) {
        pieces.push(this.send(Command.WRITE_ZEROES, commandFlags, offsetBytes + at, Math.min(rangeCommandBytesMax, lengthBytes - at), undefined, undefined));
      }
      await Promise.all(pieces);
      if (flags.fua && !hasFlag(this.remote.flags, TransmissionFlag.SEND_FUA)) await this.flush();
      return;
    }
    if (flags.fast) throw new BlockError('ENOTSUP', `${this.options.name}: the remote has no write-zeroes, so zeroing is a write loop`);
    const zeroes = Buffer.alloc(Math.min(zeroChunkBytes, lengthBytes));
    for (let at = 0; at < lengthBytes; at += zeroes.length) {
      await this.write(offsetBytes + at, zeroes.subarray(0, Math.min(zeroes.length, lengthBytes - at)), { fua: false });
    }
    if (flags.fua) await this.flush();
  }

  /** Sends one request when the in-flight bounds allow; resolves with it once its reply is complete. */
  private send(command: number, flags: number, offsetBytes: number, lengthBytes: number,
    payload: Buffer | undefined, target: Buffer | undefined): Promise<InFlight> {
    const minimum = this.remote.minimumBlockBytes;
    if (minimum > 1 && command !== Command.FLUSH && (offsetBytes % minimum !== 0 || lengthBytes % minimum !== 0)) {
      // No read-modify-write here: the server promised nothing for such a request, and a guess could tear a block.
      return Promise.reject(new BlockError('EIO', `${this.options.name}: ${commandNames[command]} of ${lengthBytes} bytes at ${offsetBytes} ` +
        `is not aligned to the remote's minimum block size of ${minimum} bytes (the page cache sends whole pages; or serve the export ` +
        'with a smaller minimum)'));
    }
    if (this.lostReason !== undefined || this.closing) {
      return Promise.reject(new BlockError('EIO', `${this.options.name}: ${this.options.address.uri} is not connected (${this.lostReason ?? 'closing'})`));
    }
    const bytes = (payload?.length ?? 0) + (target?.length ?? 0);
    return new Promise<InFlight>((resolve, reject) => {
      const start = (): void => {
        if (this.lostReason !== undefined) {
          reject(new BlockError('EIO', `${this.options.name}: ${this.options.address.uri} is not connected (${this.lostReason})`));
          return;
        }
        const cookie = this.nextCookie;
        this.nextCookie += 1n;
        const request: InFlight = new InFlight(command, offsetBytes, lengthBytes, target, (error) => {
          if (error) reject(error);
          else resolve(request);
        }, this.options.name, this.remote.baseAllocationId);
        request.sentAtMs = Date.now();
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

  private hasRoom(bytes: number): boolean {
    // One request always fits when nothing is in flight, whatever its size.
    return this.inFlight.size === 0 || (this.inFlight.size < this.requestsInFlightMax && this.bytesInFlight + bytes <= this.bytesInFlightMax);
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

  private checkDeadlines(): void {
    const oldest = this.inFlight.values().next();
    if (oldest.done || Date.now() - oldest.value.sentAtMs < this.requestTimeoutMs) return;
    // Timers run before the loop polls sockets: after our own process stalled (a busy loop, a starved CPU), the reply
    // may be waiting unread. The verdict waits until the poll phase has run once, so only the remote's silence counts.
    const suspect = oldest.value;
    setImmediate(() => {
      if (this.lostReason !== undefined || this.inFlight.values().next().value !== suspect) return;
      this.lose(`no reply to a ${commandNames[suspect.command]} within ${this.requestTimeoutMs} ms (failfast)`);
    });
  }

  /** The connection is gone: every request in flight or waiting fails with EIO, and so does every later one. */
  private lose(reason: string): void {
    if (this.lostReason !== undefined) return;
    this.lostReason = reason;
    clearInterval(this.timer);
    this.socket.destroy();
    const error = new BlockError('EIO', `${this.options.name}: ${this.options.address.uri}: ${reason}`);
    const requests = [...this.inFlight.values()];
    this.inFlight.clear();
    this.bytesInFlight = 0;
    for (const request of requests) request.fail(error);
    for (const queued of this.queue.splice(0)) queued.start();
    this.notifyIfDrained();
    if (!this.closing) for (const listener of this.lostListeners) listener(reason);
  }
}
