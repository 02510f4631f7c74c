import assert from 'node:assert/strict';
import type net from 'node:net';
import tls from 'node:tls';
import { isBlockError } from '../blockdev/errors.js';
import type { PooledBuffer } from '../blockdev/buffer-pool.js';
import { RangeOrder, type Ticket } from '../blockdev/range-order.js';
import { type BlockDevice, finishedNow } from '../blockdev/types.js';
import { Command, HandshakeFlag, IHAVEOPT, NBDMAGIC, REQUEST_HEADER_BYTES } from './constants.js';
import { InputQueue } from './input-queue.js';
import { checkedPhase, type HandshakeStep, OptionReader, type Phase, readClientFlags } from './handshake.js';
import type { ExportEntry, ExportTable } from './negotiation.js';
import { CommandRunner } from './commands.js';
import { type FileReplyStats, ReplyWriter } from './reply-writer.js';
import { parseRequestHeader, type RequestHeader, validateRequest } from './requests.js';
import { SocketReader } from './socket-reader.js';
import { type Clock, type ClockTimer, systemClock } from '../sys/clock.js';
import type { ConnectionOptions } from './connection-options.js';

export { type ConnectionOptions, defaultConnectionOptions, handshakeTimeoutBounds, inFlightRequestsBounds } from './connection-options.js';

interface PendingWrite {
  request: RequestHeader;
  offsetBytes: number;
  target: PooledBuffer | undefined;
  filledBytes: number;
}

/**
 * One client: the handshake, then pipelined requests served concurrently
 * with replies written as they complete. Everything the client sends is
 * parsed here with explicit bounds; nothing unparsed reaches the device.
 */
export class Connection {
  private phase: Phase = 'client-flags';
  private readonly input = new InputQueue();
  private optionReader: OptionReader | undefined;
  private handshakeTimer: ClockTimer | undefined;
  private readonly clock: Clock;
  /** Bytes of a refused payload (option or WRITE) still to be skipped. */
  private drainBytes = 0;
  private drainThen: (() => void) | undefined;
  /** A WRITE whose payload is arriving; `filledBytes` of it are in `target` already. */
  private pendingWrite: PendingWrite | undefined;
  /** The accepted socket, or after STARTTLS the TLS socket over it. */
  private socket: net.Socket;
  private readonly reader: SocketReader;
  private writer: ReplyWriter;
  private device: BlockDevice | undefined;
  private commands: CommandRunner | undefined;
  private transmissionFlags = 0;
  private structured = false;
  private blockStatusNegotiated = false;
  private inFlightRequests = 0;

  /** Requests being served now (metrics). */
  get requestsInFlight(): number {
    return this.inFlightRequests;
  }

  private inFlightBytes = 0;
  private readonly order = new RangeOrder();
  private readingPaused = false;
  /** NBD_CMD_DISC or server shutdown: serve what is in flight, read nothing more. */
  private stopReading = false;
  private idleWaiters: Array<() => void> = [];
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;

  constructor(
    accepted: net.Socket,
    private readonly exports: ExportTable,
    private readonly options: ConnectionOptions,
    private readonly isShuttingDown: () => boolean,
  ) {
    this.clock = options.clock ?? systemClock;
    this.closed = new Promise((resolve) => { this.resolveClosed = resolve; });
    this.reader = new SocketReader(accepted, {
      directTarget: () => this.directTarget(),
      betweenRequests: () => this.pendingWrite === undefined && this.drainBytes === 0 && this.input.length === 0,
      onChunk: (chunk) => {
        options.inputPoll?.inputArrived();
        this.input.push(chunk);
        this.pump();
      },
      onDirect: (byteCount) => {
        options.inputPoll?.inputArrived();
        this.onDirectBytes(byteCount);
      },
      // TLS wraps the accepted socket's own handle, which a transferred socket no longer has.
    }, options.reader, !options.directReads ? 'events' : options.tls === undefined ? 'transfer' : 'in-place');
    const socket = this.reader.socket;
    this.socket = socket;
    this.writer = this.writerFor(socket, true);
    socket.setNoDelay?.(true);
    this.listenTo(socket);
    this.handshakeTimer = this.clock.setTimeout(() => {
      this.hardDisconnect(`handshake not finished within ${this.options.handshakeTimeoutMs} ms`);
    }, this.options.handshakeTimeoutMs, { unref: true });
    const greeting = Buffer.allocUnsafe(18);
    greeting.writeBigUInt64BE(NBDMAGIC, 0);
    greeting.writeBigUInt64BE(IHAVEOPT, 8);
    greeting.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 16);
    socket.write(greeting);
  }

  private writerFor(socket: net.Socket, sendFiles: boolean): ReplyWriter {
    return new ReplyWriter(socket, {
      // More replies are coming: others are in flight, or requests wait in the input (a write
      // answered inside pump() is no longer counted in flight by the time the next one is read).
      shouldCork: () => this.inFlightRequests > 1 || this.input.length > 0,
      flowChanged: () => this.updateFlow(),
      broken: (reason) => this.hardDisconnect(reason),
    }, { bufferPool: this.options.bufferPool, fileStallMs: this.options.fileReplyStallMs, sendFiles });
  }

  private listenTo(socket: net.Socket): void {
    socket.on('drain', () => this.updateFlow());
    socket.on('error', (error) => this.options.logger.debug({ err: error }, 'socket error'));
    socket.on('close', () => this.onClose());
    socket.on('end', () => this.onPeerEnd());
  }

  /** Payload bytes received straight into their buffers (see socket-reader.ts). */
  get directBytesReceived(): number {
    return this.reader.directBytes;
  }

  /** How read replies went out by sendfile (see reply-writer.ts). */
  get fileReplyStats(): FileReplyStats {
    return this.writer.stats;
  }

  get inTransmission(): boolean {
    return this.phase === 'transmission';
  }

  /** Still negotiating: options or the TLS handshake (the admission budget's concern). */
  get negotiating(): boolean {
    return this.phase === 'client-flags' || this.phase === 'options' || this.phase === 'tls-handshake';
  }

  /** Ends the connection now (admission made room for a newer client, and logged why). */
  drop(): void {
    this.hardDisconnect('dropped for a newer client', false);
  }

  /** Stops reading new requests, lets in-flight ones finish, then closes. */
  async shutdown(): Promise<void> {
    if (this.phase === 'closed') return;
    if (this.phase !== 'transmission') {
      this.hardDisconnect('server shutting down');
      return;
    }
    this.stopReading = true;
    await this.whenIdle();
    this.closeGracefully();
    await this.closed;
  }

  private pump(): void {
    while (this.phase !== 'closed' && this.phase !== 'closing') {
      if (this.drainBytes > 0) {
        this.drainBytes -= this.input.skip(this.drainBytes);
        if (this.drainBytes > 0) return;
        const then = this.drainThen;
        this.drainThen = undefined;
        then?.();
        continue;
      }
      // During the TLS handshake the TLS layer owns the bytes; ours resume once it is secure.
      if (this.phase === 'tls-handshake') return;
      const progressed = this.phase === 'transmission' ? this.readRequest()
        : this.takeHandshakeStep(this.phase === 'client-flags' ? readClientFlags(this.input, this.options.tls?.mode)
          : this.optionReader!.next(this.input));
      if (!progressed) return;
    }
  }

  /** Applies one step of the handshake (see handshake.ts); false when nothing more can be read now. */
  private takeHandshakeStep(step: HandshakeStep): boolean {
    switch (step.kind) {
      case 'wait': return false;
      case 'continue': return true;
      case 'options':
        this.optionReader = new OptionReader(step.negotiation, this.exports, (reply) => this.writer.send(reply), this.isShuttingDown);
        this.enterPhase('options');
        return true;
      case 'skip': {
        const { afterwards } = step;
        this.drainBytes = step.bytes;
        this.drainThen = () => {
          if (afterwards.kind === 'disconnect') this.hardDisconnect(afterwards.reason);
          else this.writer.send(afterwards.reply);
        };
        return true;
      }
      case 'starttls':
        this.startTls();
        return false;
      case 'transmission':
        this.enterTransmission(step.entry, step.flags);
        return true;
      case 'close':
        this.options.logger.info({ reason: step.reason }, 'closing during negotiation');
        this.closeGracefully();
        return false;
      case 'disconnect':
        this.hardDisconnect(step.reason);
        return false;
    }
  }

  /**
   * STARTTLS was acknowledged: the TLS layer takes the socket over. The ACK
   * went out in plaintext before (Node hands each write to the handle at
   * once, and TLS writes queue behind it). The handshake deadline keeps
   * running: a client stalled in the TLS handshake is dropped like one
   * stalled in options.
   */
  private startTls(): void {
    // The spec forbids sending anything between STARTTLS and its reply: bytes already here broke that.
    if (this.input.length > 0) {
      this.hardDisconnect(`${this.input.length} bytes sent after NBD_OPT_STARTTLS before its reply`);
      return;
    }
    const server = this.options.tls!;
    this.enterPhase('tls-handshake');
    const plain = this.reader.release();
    const secure = new tls.TLSSocket(plain, server.socketOptions);
    this.socket = secure;
    // sendfile would put plaintext on the wire under the TLS stream: never over TLS.
    this.writer = this.writerFor(secure, false);
    this.listenTo(secure);
    if (!(this.options.directReads && this.reader.adoptTls(secure))) {
      secure.on('data', (chunk: Buffer) => {
        this.options.inputPoll?.inputArrived();
        this.input.push(chunk);
        this.pump();
      });
    }
    // A failed handshake (wrong key, wrong CA, garbage for a ClientHello) ends this connection only.
    secure.on('error', (error: Error & { reason?: string }) => this.hardDisconnect(`TLS: ${error.reason ?? error.message}`));
    secure.once('secure', () => {
      if (this.phase !== 'tls-handshake') return;
      const refusal = server.refusePeer?.(secure.getPeerX509Certificate());
      if (refusal !== undefined) {
        this.hardDisconnect(`TLS: ${refusal}`);
        return;
      }
      this.optionReader!.restartAfterTls();
      this.enterPhase('options');
      this.options.logger.debug({ protocol: secure.getProtocol(), cipher: secure.getCipher().name }, 'TLS established');
      this.pump();
    });
  }

  private enterPhase(next: Phase): void {
    this.phase = checkedPhase(this.phase, next);
  }

  private enterTransmission(entry: ExportEntry, flags: number): void {
    const negotiated = this.optionReader!;
    this.handshakeTimer?.cancel();
    this.handshakeTimer = undefined;
    this.device = entry.device;
    this.transmissionFlags = flags;
    this.structured = negotiated.structuredReplies;
    const metaExport = negotiated.metaContextExport;
    this.blockStatusNegotiated = metaExport !== undefined && this.exports.find(metaExport) === entry;
    this.commands = new CommandRunner(entry.device, this.writer, this.structured, this.options, this.options.logger,
      { contexts: this.blockStatusNegotiated ? negotiated.metaContexts : [], bitmaps: entry.dirtyBitmaps });
    this.reader.useFullSlabs();
    this.optionReader = undefined;
    this.enterPhase('transmission');
    this.options.logger.info({ export: entry.name, flags, structuredReplies: this.structured }, 'client attached');
  }

  private readRequest(): boolean {
    if (this.stopReading) {
      this.input.clear();
      return false;
    }
    if (this.pendingWrite !== undefined) return this.fillPendingWrite();
    if (this.inFlightRequests >= this.options.inFlightRequestsMax || this.inFlightBytes >= this.options.inFlightBytesMax) {
      this.updateFlow();
      return false;
    }
    if (this.input.length < REQUEST_HEADER_BYTES) return false;
    const request = parseRequestHeader(this.input.take(REQUEST_HEADER_BYTES));
    if (request === undefined) {
      this.hardDisconnect('bad request magic');
      return false;
    }
    if (request.type === Command.DISC) {
      this.options.logger.info('client sent NBD_CMD_DISC');
      this.stopReading = true;
      this.input.clear();
      void this.whenIdle().then(() => this.closeGracefully());
      return false;
    }
    assert(this.device !== undefined);
    const verdict = validateRequest(request, {
      sizeBytes: this.device.sizeBytes,
      transmissionFlags: this.transmissionFlags,
      structuredReplies: this.structured,
      blockStatusNegotiated: this.blockStatusNegotiated,
    });
    if (!verdict.ok) {
      this.options.logger.warn({ cookie: request.cookie.toString(), message: verdict.message }, 'rejected request');
      this.commands!.replyError(request, verdict.error, verdict.message);
      // The payload of a refused write still follows the header: skip it to stay framed.
      if (request.type === Command.WRITE) this.drainBytes = request.lengthBytes;
      return true;
    }
    if (request.type === Command.WRITE) {
      this.pendingWrite = { request, offsetBytes: verdict.offsetBytes, target: undefined, filledBytes: 0 };
      return true;
    }
    this.dispatch(request, verdict.offsetBytes, undefined, undefined);
    return true;
  }

  /**
   * Moves queued payload bytes into the pending WRITE. A payload that is all
   * in one queued chunk is used in place; otherwise it gets its own buffer,
   * filled as bytes arrive, so the rest can be received straight into it.
   */
  private fillPendingWrite(): boolean {
    const pending = this.pendingWrite!;
    const lengthBytes = pending.request.lengthBytes;
    if (pending.target === undefined) {
      if (this.input.length >= lengthBytes) {
        const view = this.input.takeIfContiguous(lengthBytes);
        if (view !== undefined) {
          this.pendingWrite = undefined;
          this.dispatch(pending.request, pending.offsetBytes, view, undefined);
          return true;
        }
      }
      pending.target = this.options.bufferPool.acquire(lengthBytes);
    }
    pending.filledBytes += this.input.copyInto(pending.target.buffer, pending.filledBytes, lengthBytes - pending.filledBytes);
    if (pending.filledBytes < lengthBytes) return false;
    this.pendingWrite = undefined;
    this.dispatch(pending.request, pending.offsetBytes, pending.target.buffer, pending.target);
    return true;
  }

  private directTarget(): Buffer | undefined {
    const pending = this.pendingWrite;
    // Only when nothing queued precedes the bytes, so they land in order.
    if (pending?.target === undefined || this.input.length > 0 || this.stopReading || this.phase !== 'transmission' ||
      pending.request.lengthBytes < this.options.reader.directReadBytesMin) {
      return undefined;
    }
    return pending.target.buffer.subarray(pending.filledBytes);
  }

  private onDirectBytes(byteCount: number): void {
    const pending = this.pendingWrite;
    assert(pending?.target !== undefined && this.input.length === 0, 'direct read without a pending write');
    pending.filledBytes += byteCount;
    assert(pending.filledBytes <= pending.request.lengthBytes, 'direct read past the payload');
    if (this.phase === 'closed' || this.phase === 'closing') return;
    this.pump();
  }

  private dispatch(
    request: RequestHeader, offsetBytes: number, payload: Buffer | undefined, pooled: PooledBuffer | undefined,
  ): void {
    const heldBytes = request.type === Command.READ || request.type === Command.WRITE ? request.lengthBytes : 0;
    this.inFlightRequests += 1;
    this.inFlightBytes += heldBytes;
    const mutating = request.type === Command.WRITE || request.type === Command.TRIM || request.type === Command.WRITE_ZEROES;
    const ordered = request.type !== Command.FLUSH;
    const ticket = ordered ? this.order.acquire(offsetBytes, request.lengthBytes, mutating) : undefined;
    const stats = this.options.requestStats;
    const startedMs = stats === undefined ? 0 : performance.now();
    const commands = this.commands!;
    const executing = ticket?.ready === undefined ? commands.execute(request, offsetBytes, payload)
      : ticket.ready.then(() => commands.execute(request, offsetBytes, payload));
    if (executing === finishedNow) {
      // Answered in this turn (an inline write): we are inside pump(), which goes on reading.
      stats?.record(request.type, heldBytes, startedMs, undefined);
      this.endRequest(heldBytes, pooled, ticket, false);
      return;
    }
    const flush = request.type === Command.FLUSH;
    if (flush) this.options.inputPoll?.flushWaiting();
    // One reaction for either outcome: a catch and a finally would each cost a promise and a turn.
    const settled = (failure: string | undefined): void => {
      stats?.record(request.type, heldBytes, startedMs, failure);
      this.options.inputPoll?.replySent(flush);
      this.endRequest(heldBytes, pooled, ticket, true);
      this.pump();
    };
    executing.then(() => settled(undefined), (error: unknown) => {
      try {
        commands.replyFailure(request, error);
      } finally {
        settled(isBlockError(error) ? error.code : 'EIO');
      }
    });
  }

  private endRequest(heldBytes: number, pooled: PooledBuffer | undefined, ticket: Ticket | undefined, pumpOnResume: boolean): void {
    // The device is done with the payload once its promise settled.
    pooled?.release();
    ticket?.release();
    this.inFlightRequests -= 1;
    this.inFlightBytes -= heldBytes;
    if (this.inFlightRequests === 0) this.notifyIdle();
    this.updateFlow(pumpOnResume);
  }

  /** Pauses or resumes reading requests; on resuming, reads what is queued unless the caller is inside pump() already. */
  private updateFlow(pumpOnResume = true): void {
    if (this.phase === 'closed') return;
    const shouldPause = this.socket.writableNeedDrain ||
      this.inFlightRequests >= this.options.inFlightRequestsMax ||
      this.inFlightBytes + this.writer.heldBytes >= this.options.inFlightBytesMax;
    if (shouldPause && !this.readingPaused) {
      this.readingPaused = true;
      this.socket.pause();
    } else if (!shouldPause && this.readingPaused) {
      this.readingPaused = false;
      this.socket.resume();
      if (pumpOnResume) this.pump();
    }
  }

  private whenIdle(): Promise<void> {
    if (this.inFlightRequests === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private notifyIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const waiter of waiters) waiter();
  }

  private closeGracefully(): void {
    if (this.phase === 'closed' || this.phase === 'closing') return;
    this.enterPhase('closing');
    // end() writes corked replies first.
    this.socket.end();
    // A peer that never closes its side must not hold the connection (or a shutdown) forever.
    this.clock.setTimeout(() => this.socket.destroy(), 5000, { unref: true });
  }

  private hardDisconnect(reason: string, log = true): void {
    if (this.phase === 'closed') return;
    if (log) this.options.logger.warn({ reason }, 'disconnecting client');
    this.socket.destroy();
    this.onClose();
  }

  private onPeerEnd(): void {
    // The client half-closed: finish what it asked for, then close our side.
    this.stopReading = true;
    void this.whenIdle().then(() => this.closeGracefully());
  }

  private onClose(): void {
    if (this.phase === 'closed') return;
    this.enterPhase('closed');
    this.writer.close();
    this.handshakeTimer?.cancel();
    this.input.clear();
    this.resolveClosed();
  }
}

