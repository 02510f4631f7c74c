import assert from 'node:assert/strict';
import fs from 'node:fs';
import type net from 'node:net';
import { BlockError, fromNegativeErrno, toBlockError } from '../blockdev/errors.js';
import type { BufferPool } from '../blockdev/buffer-pool.js';
import { preadOrZeroes } from '../sys/fs-io.js';
import { EAGAIN, native } from '../sys/native.js';

/** A read reply whose data is a file range: the header, then `lengthBytes` from `positionBytes` of `fd`. */
export interface FileReply {
  header: Buffer;
  fd: number;
  positionBytes: number;
  lengthBytes: number;
}

export interface ReplyWriterHooks {
  /** More replies may finish in this event-loop turn: batch them into one system call. */
  shouldCork(): boolean;
  /** The socket is full or held replies went out: the connection re-checks whether to read. */
  flowChanged(): void;
  /** A reply broke off part-way, so the stream is no longer framed: the connection must close. */
  broken(reason: string): void;
}

export interface ReplyWriterOptions {
  bufferPool: BufferPool;
  /**
   * A file reply whose socket stays full this long (a client not reading)
   * gives its thread back and sends the rest through Node's writes, which
   * wait for the socket without holding a thread.
   */
  fileStallMs: number;
  /** false: never sendfile (a TLS socket, whose bytes must pass through the TLS layer). */
  sendFiles?: boolean;
}

type Held =
  | { kind: 'buffer'; buffer: Buffer; written: (() => void) | undefined }
  | { kind: 'file'; reply: FileReply; settle: (sent: boolean, error?: BlockError) => void };
type HeldFile = Extract<Held, { kind: 'file' }>;

/** How file replies went, for tests and status to see which paths ran. */
export interface FileReplyStats {
  /** Header and data bytes sent by sendfile. */
  bytesSent: number;
  /** Replies whose socket stayed full, finished through Node's writes. */
  stalled: number;
  /** Replies declined because Node had bytes to write first (read instead). */
  declined: number;
}

export function emptyFileReplyStats(): FileReplyStats {
  return { bytesSent: 0, stalled: 0, declined: 0 };
}

export function addFileReplyStats(into: FileReplyStats, from: FileReplyStats): void {
  into.bytesSent += from.bytesSent;
  into.stalled += from.stalled;
  into.declined += from.declined;
}

/**
 * The one writer of a connection's replies. Replies are buffers written
 * through Node, except large reads of file-backed ranges, which a pool thread
 * sends with sendfile: the kernel queues references to page-cache pages
 * instead of our copying each MiB into a reply buffer and again into the
 * socket on the event loop (the one thread every reply passes through).
 *
 * Both paths write the same socket, so they take turns: replies finishing
 * while a file reply is being sent are held and written after it, in order.
 * A file reply whose turn comes while Node still has bytes to write (the
 * client reads slowly) is declined, and the caller reads it into a buffer:
 * waiting for Node to drain would hold the request, and a client that stops
 * reading would hold it forever. The thread sends through a duplicate of the
 * socket's descriptor that this writer owns, so Node closing its socket can
 * never leave the thread writing into a descriptor number that a new
 * connection has been given.
 *
 * A reply's bytes are read from the page cache when the kernel sends them,
 * not when the read was served: a write the client issued before this reply
 * reached it may show in it. The spec allows that (the server MAY process
 * commands in any order; a client that needs an order waits for the reply),
 * and a client that does wait sees the data as of the read.
 */
export class ReplyWriter {
  private held: Held[] = [];
  private heldBytesNow = 0;
  private fileBusy = false;
  private corked = false;
  private closed = false;
  /** Our duplicate of the socket's descriptor; null once we found none can be had. */
  private socketFd: number | null | undefined;
  readonly stats = emptyFileReplyStats();

  constructor(
    private readonly socket: net.Socket,
    private readonly hooks: ReplyWriterHooks,
    private readonly options: ReplyWriterOptions,
  ) {}

  /** Bytes of replies waiting behind a file reply. */
  get heldBytes(): number {
    return this.heldBytesNow;
  }

  /** Whether sendFile can be used on this socket (the addon has sendfile and the socket a descriptor). */
  get canSendFiles(): boolean {
    if (this.options.sendFiles === false) return false;
    if (this.socketFd === undefined) this.socketFd = this.duplicateSocketFd();
    return this.socketFd !== null && !this.closed;
  }

  /** Queues one reply; `written` runs once the socket no longer needs the buffer. */
  send(buffer: Buffer, written?: () => void): void {
    if (this.closed || this.socket.destroyed) {
      written?.();
      return;
    }
    if (this.fileBusy || this.held.length > 0) {
      this.held.push({ kind: 'buffer', buffer, written });
      this.heldBytesNow += buffer.length;
      return;
    }
    this.write(buffer, written);
  }

  /**
   * Sends a file reply; resolves true once all of it is with the kernel (or
   * with Node), false when declined (nothing was sent: read it instead).
   */
  sendFile(reply: FileReply): Promise<boolean> {
    assert(reply.header.length <= 64, 'file reply header too long');
    return new Promise((resolve, reject) => {
      const settle = (sent: boolean, error?: BlockError): void => (error === undefined ? resolve(sent) : reject(error));
      if (this.closed || this.socket.destroyed) {
        settle(false, new BlockError('ESHUTDOWN', 'connection closed before the read reply was sent'));
        return;
      }
      const item: HeldFile = { kind: 'file', reply, settle };
      if (this.fileBusy || this.held.length > 0) this.held.push(item);
      else this.startFile(item);
    });
  }

  /** The connection is gone: nothing more is written, held replies are dropped. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const item of this.held.splice(0)) {
      if (item.kind === 'buffer') item.written?.();
      else item.settle(false, new BlockError('ESHUTDOWN', 'connection closed before the read reply was sent'));
    }
    this.heldBytesNow = 0;
    if (typeof this.socketFd === 'number') {
      // Our duplicate keeps the connection open after Node closed its own
      // descriptor; shutting it down also wakes a sending thread at once.
      native!.shutdownSocket!(this.socketFd);
      if (!this.fileBusy) this.closeSocketFd();
    }
  }

  private write(buffer: Buffer, written: (() => void) | undefined): void {
    if (!this.corked && this.hooks.shouldCork()) {
      // Replies finishing in one event-loop turn go out in one system call.
      this.corked = true;
      this.socket.cork();
      setImmediate(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    const flowing = written === undefined ? this.socket.write(buffer) : this.socket.write(buffer, () => written());
    if (!flowing) this.hooks.flowChanged();
  }

  /** Starts a file reply, or declines it when Node has bytes to write first. */
  private startFile(item: HeldFile): void {
    if (this.corked) {
      this.corked = false;
      this.socket.uncork();
    }
    if (this.socket.writableLength > 0 || typeof this.socketFd !== 'number') {
      this.stats.declined += 1;
      item.settle(false);
      return;
    }
    this.fileBusy = true;
    const { reply } = item;
    native!.sendFileAsync!(this.socketFd, reply.header, reply.fd, reply.positionBytes, reply.lengthBytes,
      this.options.fileStallMs, (result, sentBytes) => {
        this.stats.bytesSent += sentBytes;
        if (result === 0) {
          this.finishFile(item, true);
        } else if (this.closed) {
          this.finishFile(item, sentBytes > 0, new BlockError('ESHUTDOWN', 'connection closed while the read reply was sent'));
        } else if (result === -EAGAIN) {
          this.stats.stalled += 1;
          void this.sendRestThroughNode(item, sentBytes);
        } else {
          const error = fromNegativeErrno(result, `sending the read reply at ${reply.positionBytes}`);
          // Nothing on the wire yet: the request can still get an error reply.
          if (sentBytes > 0) this.hooks.broken(`${error.message}, after ${sentBytes} of its bytes`);
          this.finishFile(item, sentBytes > 0, error);
        }
      });
  }

  /** The client stopped reading mid-reply: the rest is read into a buffer and queued with Node. */
  private async sendRestThroughNode(item: HeldFile, sentBytes: number): Promise<void> {
    const { reply } = item;
    const totalBytes = reply.header.length + reply.lengthBytes;
    const rest = this.options.bufferPool.acquire(totalBytes - sentBytes);
    try {
      const headerLeft = reply.header.copy(rest.buffer, 0, Math.min(sentBytes, reply.header.length));
      const dataSent = Math.max(0, sentBytes - reply.header.length);
      // Past the file's end zeroes, as the sendfile path sends them.
      await preadOrZeroes(reply.fd, rest.buffer, headerLeft, reply.positionBytes + dataSent);
    } catch (error) {
      rest.release();
      const failure = toBlockError(error, `reading the rest of the read reply at ${reply.positionBytes}`);
      this.hooks.broken(`${failure.message}, after ${sentBytes} of its bytes were sent`);
      this.finishFile(item, true, failure);
      return;
    }
    if (this.closed || this.socket.destroyed) {
      rest.release();
      this.finishFile(item, true, new BlockError('ESHUTDOWN', 'connection closed while the read reply was sent'));
      return;
    }
    this.write(rest.buffer, () => rest.release());
    this.finishFile(item, true);
  }

  private finishFile(item: HeldFile, sent: boolean, error?: BlockError): void {
    this.fileBusy = false;
    if (this.closed && typeof this.socketFd === 'number') this.closeSocketFd();
    item.settle(sent, error);
    if (!this.closed) this.writeHeld();
  }

  private writeHeld(): void {
    const hadHeld = this.heldBytesNow > 0;
    while (!this.fileBusy && this.held.length > 0) {
      const item = this.held.shift()!;
      if (item.kind === 'file') {
        this.startFile(item);
        continue;
      }
      this.heldBytesNow -= item.buffer.length;
      this.write(item.buffer, item.written);
    }
    if (hadHeld) this.hooks.flowChanged();
  }

  private duplicateSocketFd(): number | null {
    if (native?.sendFileAsync === undefined || native.dup === undefined || native.shutdownSocket === undefined) return null;
    const fd = (this.socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) return null;
    const duplicate = native.dup(fd);
    return duplicate < 0 ? null : duplicate;
  }

  private closeSocketFd(): void {
    const fd = this.socketFd;
    assert(typeof fd === 'number');
    this.socketFd = null;
    try {
      fs.closeSync(fd);
    } catch {
      // Already gone; nothing else holds this number.
    }
  }
}
