import type net from 'node:net';

/**
 * Reads exact byte counts from a socket during negotiation, where every step
 * waits for the server's answer. Detached before STARTTLS (the TLS socket
 * takes over the stream) and before transmission (the reply parser does).
 */
export class HandshakeReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiting: { bytes: number; resolve: (data: Buffer) => void; reject: (error: Error) => void } | undefined;
  private ended: Error | undefined;
  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    this.deliver();
  };
  private readonly onEnd = (): void => this.fail(new Error('the server closed the connection during negotiation'));
  private readonly onError = (error: Error): void => this.fail(error);

  constructor(private readonly socket: net.Socket) {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
  }

  read(bytes: number): Promise<Buffer> {
    if (this.waiting) throw new Error('HandshakeReader: one read at a time');
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => {
      this.waiting = { bytes, resolve, reject };
      this.deliver();
    });
  }

  /** Stops reading; returns what arrived beyond the last read (the server's first transmission bytes, normally none). */
  detach(): Buffer {
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.socket.off('error', this.onError);
    this.socket.pause();
    const rest = Buffer.concat(this.chunks);
    this.chunks = [];
    this.buffered = 0;
    return rest;
  }

  private deliver(): void {
    const waiting = this.waiting;
    if (!waiting || this.buffered < waiting.bytes) return;
    this.waiting = undefined;
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const taken = all.subarray(0, waiting.bytes);
    const rest = all.subarray(waiting.bytes);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    waiting.resolve(taken);
  }

  private fail(error: Error): void {
    this.ended ??= error;
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.reject(this.ended);
  }
}
