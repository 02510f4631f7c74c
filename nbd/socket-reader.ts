import net from 'node:net';
import type tls from 'node:tls';

/** Where received bytes go. */
export interface ReadSink {
  /**
   * The buffer the next bytes belong in when they are the rest of a large
   * payload (a WRITE's data), or undefined. Asked before every read.
   */
  directTarget(): Buffer | undefined;
  /** Nothing is queued and no payload is pending: the next byte starts a request header. */
  betweenRequests(): boolean;
  /** Bytes for the parser: a view the reader never writes into again. */
  onChunk(chunk: Buffer): void;
  /** This many bytes landed at the start of the last buffer directTarget returned. */
  onDirect(byteCount: number): void;
}

export interface SocketReaderOptions {
  /** Payloads at least this long are received straight into their buffer (the sink applies it). */
  directReadBytesMin: number;
  /** Everything else is received into slabs of this size, handed out in consecutive views. */
  slabBytes: number;
  /**
   * One read into a slab takes at most this much: the bytes after a WRITE
   * header are copied out of the slab into the payload's buffer, so a read
   * that runs far into a large payload costs a copy of all of it.
   */
  slabReadBytesMax: number;
  /**
   * For a while after a payload went straight into its buffer, a read that
   * starts a request takes one header and no more (nbdkit's way): with large
   * writes about, a full slab read would pull the next payload's first bytes
   * into the slab, to be copied out again, and use up a fresh slab (page
   * faults) every few requests. Measured on 1 MiB writes: the copy and the
   * faults were about a sixth of the event loop's time; on 64 KiB writes
   * mixed with reads, most of it. Small I/O alone never enters this mode and
   * keeps reading many requests per system call.
   */
  headerReadBytes: number;
  /** How many request starts are read header by header after a direct payload. */
  headerReadsAfterDirect: number;
}

export const defaultSocketReaderOptions: SocketReaderOptions = {
  directReadBytesMin: 65536,
  slabBytes: 256 * 1024,
  slabReadBytesMax: 64 * 1024,
  headerReadBytes: 28,
  headerReadsAfterDirect: 32,
};

/** A slab with less room than this left is retired: reads into tiny remainders cost a system call each. */
const slabRoomMinBytes = 16 * 1024;

/**
 * Until the connection reaches transmission it reads into small slabs:
 * options are tens of bytes, and a client that connects and sends nothing
 * should cost next to nothing. A full slab per accepted connection (256 KiB
 * of external memory each) was half of the time spent accepting a flood of
 * idle connections, in the allocation and in V8's collector.
 */
const negotiationSlabBytes = 2048;

/**
 * Owns how an accepted socket's bytes are received, so the kernel copies them
 * straight to where they will be used. Node's default is a fresh 64 KiB
 * allocation per read; a 1 MiB WRITE then costs 16 allocations (with page
 * faults on fresh memory) and a copy of the payload out of them, on the one
 * thread that also parses every request: 1 MiB writes ran at 0.6x nbdkit's
 * throughput that way, and at about 1.0x received like this. A large payload
 * is received straight into its own pooled buffer, and everything else into
 * slabs consumed front to back, so views the parser holds are never
 * overwritten.
 *
 * Node has no public way to give an accepted socket a user read buffer
 * (`onread` is a constructor option, and the server constructs the socket),
 * so the accepted socket's handle moves to a new Socket built with `onread`.
 * If this Node does not expose the handle that way, the accepted socket is
 * used as it is: every byte then goes through onChunk, which is correct, only
 * slower. `transfer: false` forces that path (tests use it).
 */
export class SocketReader {
  readonly socket: net.Socket;
  private slab: Buffer;
  private slabUsedBytes = 0;
  /** Size of the next slab: small while negotiating (see negotiationSlabBytes), then options.slabBytes. */
  private slabBytesNow = negotiationSlabBytes;
  /** The payload view libuv is reading into, if any. */
  private direct: Buffer | undefined;
  /** Request starts still to read header by header (see headerReadsAfterDirect). */
  private headerReadsLeft = 0;
  /** Payload bytes the kernel copied straight into their buffers (tests check the path ran). */
  directBytes = 0;
  /** The listener of a socket read through 'data' events. */
  private onData: ((chunk: Buffer) => void) | undefined;
  /** How the accepted socket is read: the placement asked for, or 'events' where it could not be had. */
  private mode: 'transfer' | 'in-place' | 'events' = 'events';

  /**
   * `placement`: 'transfer' moves the handle to a socket built with onread;
   * 'in-place' sets the same up on the accepted socket itself (see
   * adoptTls), so that a TLS layer can still wrap its handle after STARTTLS;
   * 'events' reads Node's 'data' events (every byte through onChunk).
   */
  constructor(accepted: net.Socket, private readonly sink: ReadSink, private readonly options: SocketReaderOptions,
    placement: 'transfer' | 'in-place' | 'events' = 'transfer') {
    // Not from Node's shared pool: with a pooled first slab, cached 4k writes at QD1 ran 0.77-0.91x for
    // the connection's whole life (side by side, six runs), and at 1.0x with this.
    this.slab = Buffer.allocUnsafeSlow(negotiationSlabBytes);
    const handle = (accepted as unknown as { _handle?: unknown })._handle;
    if (placement === 'in-place' && this.readIntoOwnBuffers(accepted)) {
      this.mode = 'in-place';
      this.socket = accepted;
      if (accepted.isPaused()) accepted.resume();
      return;
    }
    if (placement !== 'transfer' || typeof handle !== 'object' || handle === null || accepted.destroyed) {
      this.socket = accepted;
      this.onData = (chunk: Buffer) => sink.onChunk(chunk);
      accepted.on('data', this.onData);
      if (accepted.isPaused()) accepted.resume();
      return;
    }
    // Detach the handle from the accepted socket first, so destroying that
    // socket (which keeps the server's connection count right) cannot close it.
    (accepted as unknown as { _handle: unknown })._handle = null;
    accepted.destroy();
    this.mode = 'transfer';
    this.socket = new net.Socket({
      handle, readable: true, writable: true,
      onread: { buffer: () => this.nextBuffer(), callback: (count: number, buffer: Uint8Array) => this.onRead(count, buffer) },
    } as net.SocketConstructorOpts);
  }

  /** The connection reached transmission: slabs from now on are full-sized. */
  useFullSlabs(): void {
    this.slabBytesNow = this.options.slabBytes;
  }

  /**
   * Stops handing this socket's bytes to the sink: a TLS layer takes the
   * socket over after STARTTLS and sits on top of its handle, so the
   * handle's reads go to TLS from then on. A transferred socket cannot be
   * handed over (its handle left the accepted socket), so servers with TLS
   * on never transfer.
   */
  release(): net.Socket {
    if (this.mode === 'transfer') throw new Error('a transferred socket cannot be handed to TLS');
    if (this.onData !== undefined) this.socket.off('data', this.onData);
    this.onData = undefined;
    return this.socket;
  }

  /**
   * Receives a TLS socket's decrypted bytes the way a transferred socket's
   * are: the TLS layer copies each record's plaintext straight into the
   * buffer we name (a large payload's own, or the slab), instead of
   * allocating a 16 KiB buffer per record for a 'data' event and our copying
   * it again. Measured on 1 MiB writes over TLS: that allocation churn kept
   * V8's collector at about an eighth of the profile. Node offers this only
   * to sockets built with `onread`, which a TLS socket over an accepted one
   * cannot be; it is the same stream-base mechanism (useUserBuffer on the
   * TLS handle, the socket's buffer symbols) set up after construction.
   * Returns false, changing nothing, when this Node does not expose it; the
   * caller then reads 'data' events.
   */
  adoptTls(secure: tls.TLSSocket): boolean {
    return this.readIntoOwnBuffers(secure);
  }

  private readIntoOwnBuffers(socket: net.Socket): boolean {
    const symbols = userBufferSymbols();
    const handle = (socket as unknown as { _handle?: { useUserBuffer?: unknown } })._handle;
    if (symbols === undefined || typeof handle?.useUserBuffer !== 'function' || socket.destroyed) return false;
    const first = this.nextBuffer();
    const fields = socket as unknown as Record<symbol, unknown>;
    fields[symbols.buffer] = first;
    fields[symbols.callback] = (count: number, buffer: Uint8Array) => this.onRead(count, buffer);
    fields[symbols.generator] = () => this.nextBuffer();
    (handle.useUserBuffer as (buffer: Uint8Array) => void).call(handle, first);
    return true;
  }

  private nextBuffer(): Buffer {
    const target = this.sink.directTarget();
    if (target !== undefined) {
      this.direct = target;
      this.headerReadsLeft = this.options.headerReadsAfterDirect;
      return target;
    }
    this.direct = undefined;
    if (this.slab.length - this.slabUsedBytes < Math.min(slabRoomMinBytes, this.slabBytesNow / 4)) {
      this.slab = Buffer.allocUnsafeSlow(this.slabBytesNow);
      this.slabUsedBytes = 0;
    }
    let readBytes = this.options.slabReadBytesMax;
    if (this.headerReadsLeft > 0 && this.sink.betweenRequests()) {
      this.headerReadsLeft -= 1;
      readBytes = this.options.headerReadBytes;
    }
    return this.slab.subarray(this.slabUsedBytes, this.slabUsedBytes + readBytes);
  }

  private onRead(count: number, buffer: Uint8Array): void {
    if (buffer === this.direct) {
      this.directBytes += count;
      this.sink.onDirect(count);
      return;
    }
    this.slabUsedBytes += count;
    this.sink.onChunk((buffer as Buffer).subarray(0, count));
  }
}

interface UserBufferSymbols {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

let harvested: UserBufferSymbols | null | undefined;

/** The symbols net.Socket keeps its `onread` buffer under, read off a socket built with one (never connected). */
function userBufferSymbols(): UserBufferSymbols | undefined {
  if (harvested === undefined) {
    const probe = new net.Socket({ onread: { buffer: () => Buffer.alloc(1), callback: () => true } } as net.SocketConstructorOpts);
    const own = Object.getOwnPropertySymbols(probe);
    const find = (name: string): symbol | undefined => own.find((symbol) => symbol.description === name);
    const [buffer, callback, generator] = [find('kBuffer'), find('kBufferCb'), find('kBufferGen')];
    harvested = buffer && callback && generator ? { buffer, callback, generator } : null;
    probe.destroy();
  }
  return harvested ?? undefined;
}
