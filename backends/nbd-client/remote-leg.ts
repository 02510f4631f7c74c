import type tls from 'node:tls';
import { BlockError } from '../../blockdev/errors.js';
import type { BlockDevice, DeviceCapabilities, Extent, WriteFlags, ZeroFlags } from '../../blockdev/types.js';
import { Command, CommandFlag, TransmissionFlag } from '../../nbd/constants.js';
import { clientTlsOptions } from './client-tls.js';
import type { NbdAddress } from './nbd-uri.js';
import { hasFlag, negotiate, NegotiationError, type RemoteExport } from './negotiate.js';
import { commandNames, type ContextRun, type InFlight, RemoteConnection } from './remote-connection.js';

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
  /** More metadata contexts to negotiate (a backup client's qemu:dirty-bitmap:NAME); read with contextStatus. */
  extraContexts?: string[];
  /**
   * Connections to open when the remote advertises multi-conn (its flush on
   * one connection covers writes completed on all); one otherwise.
   */
  connections?: number;
}

export const remoteLegDefaults = { requestTimeoutMs: 10_000, connectTimeoutMs: 10_000, connections: 1 } as const;
export const remoteConnectionsMax = 16;

const zeroChunkBytes = 1024 * 1024;
/** Trim, zeroing and block status are sent in pieces no longer than this (the length field is 32 bits). */
const rangeCommandBytesMax = 1024 * 1024 * 1024;

/**
 * A mirror leg that is an export on another NBD server (nbd-mirror, nbdkit,
 * qemu-nbd, nbd-server). Requests are pipelined on its connections (one, or
 * several to a remote that advertises multi-conn; remote-connection.ts),
 * matched to replies by cookie, and bounded in count and bytes. What the remote
 * lacks is done another way so every leg reads the same bytes: FUA as write
 * then flush, write-zeroes as written zeroes, and trim always as
 * write-zeroes (a trimmed range on an NBD server reads back as whatever that
 * server likes; our other legs read zeroes).
 */
export class RemoteLeg implements BlockDevice {
  readonly sizeBytes: number;
  readonly blockSizeBytes: number;
  readonly capabilities: DeviceCapabilities;
  /** Why the leg's connections ended (undefined while they work); every request fails from then on. */
  lostReason: string | undefined;
  private readonly connections: RemoteConnection[];
  private readonly lostListeners: Array<(reason: string) => void> = [];
  private closing = false;
  private nextConnection = 0;

  /** What the first connection negotiated; every other one was offered the same export. */
  private readonly remote: RemoteExport;

  private constructor(private readonly options: RemoteLegOptions, exports: RemoteExport[],
    /** Why fewer connections than asked for were opened, for status. */
    readonly connectionsNote: string | undefined) {
    const remote = exports[0];
    this.remote = remote;
    this.sizeBytes = options.usableSizeBytes ?? remote.sizeBytes;
    this.blockSizeBytes = Math.max(512, remote.minimumBlockBytes);
    this.capabilities = {
      readOnly: options.readOnly ?? false, flush: true, fua: true, trim: true, writeZeroes: true,
      fastZero: hasFlag(remote.flags, TransmissionFlag.SEND_WRITE_ZEROES) && hasFlag(remote.flags, TransmissionFlag.SEND_FAST_ZERO),
      blockStatus: remote.baseAllocationId !== undefined,
      // One connection, or several to a remote that promised multi-conn: either way our flush covers every request of ours.
      multiConn: true,
      rotational: hasFlag(remote.flags, TransmissionFlag.ROTATIONAL),
    };
    const limits = {
      name: options.name, uri: options.address.uri,
      requestTimeoutMs: options.requestTimeoutMs ?? remoteLegDefaults.requestTimeoutMs,
      // The bounds are the leg's, shared out between its connections.
      requestsInFlightMax: Math.max(1, Math.floor((options.requestsInFlightMax ?? 64) / exports.length)),
      bytesInFlightMax: Math.max(1, Math.floor((options.bytesInFlightMax ?? 64 * 1024 * 1024) / exports.length)),
    };
    this.connections = [];
    for (const negotiated of exports) this.connections.push(new RemoteConnection(negotiated, limits, (reason) => this.lose(reason)));
    // One lost while the others were still being set up (stray bytes after negotiation) ends those opened after it too.
    if (this.lostReason !== undefined) for (const connection of this.connections) connection.lose(this.lostReason);
  }

  /** Connects and negotiates; refuses a remote that cannot hold a leg (read-only, no flush, too small). */
  static async connect(options: RemoteLegOptions, tlsOptions?: tls.ConnectionOptions): Promise<RemoteLeg> {
    const { address } = options;
    const credentials = address.tls ? tlsOptions ?? clientTlsOptions(address) : undefined;
    const negotiation = { connectTimeoutMs: options.connectTimeoutMs ?? remoteLegDefaults.connectTimeoutMs, extraContexts: options.extraContexts };
    const remote = await negotiate(address, credentials, negotiation);
    const refuse = (problem: string): never => {
      remote.socket.destroy();
      throw new NegotiationError(address.uri, problem);
    };
    if (hasFlag(remote.flags, TransmissionFlag.READ_ONLY) && !options.readOnly) refuse('the export is read-only; a leg must be writable');
    // A reader (offline check, a backup client) writes nothing it would need flushed.
    if (!options.readOnly && !hasFlag(remote.flags, TransmissionFlag.SEND_FLUSH)) {
      refuse('the server does not offer flush, so nothing written there could be promised durable');
    }
    if (options.usableSizeBytes !== undefined && remote.sizeBytes < options.usableSizeBytes) {
      refuse(`the export is ${remote.sizeBytes} bytes, smaller than the ${options.usableSizeBytes} it must hold`);
    }
    const wanted = options.connections ?? remoteLegDefaults.connections;
    if (wanted <= 1) return new RemoteLeg(options, [remote], undefined);
    // Without multi-conn a flush on one connection need not cover writes sent on another, so one connection it is.
    if (!hasFlag(remote.flags, TransmissionFlag.CAN_MULTI_CONN)) {
      return new RemoteLeg(options, [remote], `${wanted} connections asked for; the remote does not advertise multi-conn, so one is used`);
    }
    const more = await Promise.allSettled(Array.from({ length: wanted - 1 }, () => negotiate(address, credentials, negotiation)));
    const opened = [remote, ...more.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []))];
    const failed = more.find((result): result is PromiseRejectedResult => result.status === 'rejected');
    const differs = opened.find((other) => other.sizeBytes !== remote.sizeBytes || other.flags !== remote.flags
      || other.minimumBlockBytes !== remote.minimumBlockBytes || other.maximumBlockBytes !== remote.maximumBlockBytes
      || (other.baseAllocationId === undefined) !== (remote.baseAllocationId === undefined));
    if (failed || differs) {
      for (const each of opened) each.socket.destroy();
      if (failed) throw failed.reason;
      throw new NegotiationError(address.uri, `a second connection was offered a different export (${differs!.sizeBytes} bytes, ` +
        `flags 0x${differs!.flags.toString(16)}) than the first (${remote.sizeBytes} bytes, flags 0x${remote.flags.toString(16)})`);
    }
    return new RemoteLeg(options, opened, undefined);
  }

  /** Connections in use (more than one only when the remote advertises multi-conn). */
  get connectionCount(): number {
    return this.connections.length;
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

  /**
   * Block status in metadata context `name` (negotiated with extraContexts)
   * from `offsetBytes`, clipped to the range. The server may answer less than
   * the whole range; the caller asks again from where the answer ends.
   */
  async contextStatus(name: string, offsetBytes: number, lengthBytes: number): Promise<ContextRun[]> {
    const id = this.remote.contextIds.get(name);
    if (id === undefined) throw new BlockError('ENOTSUP', `${this.options.address.uri} does not offer the metadata context ${name}`);
    const request = await this.send(Command.BLOCK_STATUS, 0, offsetBytes, Math.min(lengthBytes, rangeCommandBytesMax), undefined, undefined);
    const runs = request.otherContexts?.get(id);
    if (runs === undefined) throw new BlockError('EIO', `${this.options.address.uri}: no block status for ${name} at ${offsetBytes}`);
    return runs;
  }

  /** The metadata contexts the server chose, by name. */
  get contexts(): ReadonlySet<string> {
    return new Set(this.remote.contextIds.keys());
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    // Requests already sent finish (or fail fast) first.
    await Promise.all(this.connections.map((connection) => connection.close()));
    this.lostReason ??= 'closed';
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

  /** Sends one request on the least busy connection; resolves with it once its reply is complete. */
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
    return this.leastBusy().send(command, flags, offsetBytes, lengthBytes, payload, target);
  }

  private leastBusy(): RemoteConnection {
    const count = this.connections.length;
    if (count === 1) return this.connections[0];
    // Ties go round the connections, so a burst sent in one turn spreads over all of them.
    let best = this.connections[this.nextConnection % count];
    for (let step = 1; step < count; step++) {
      const candidate = this.connections[(this.nextConnection + step) % count];
      if (candidate.load < best.load) best = candidate;
    }
    this.nextConnection = (this.connections.indexOf(best) + 1) % count;
    return best;
  }

  /** One connection is gone, so the leg is: the others end too, and every request on them fails with EIO. */
  private lose(reason: string): void {
    if (this.lostReason !== undefined) return;
    this.lostReason = reason;
    const others = this.connections.length > 1 ? `another connection to the remote was lost: ${reason}` : reason;
    for (const connection of this.connections) connection.lose(others);
    if (!this.closing) for (const listener of this.lostListeners) listener(reason);
  }
}
