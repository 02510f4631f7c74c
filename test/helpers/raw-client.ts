import net from 'node:net';
import tls from 'node:tls';

/**
 * A byte-level NBD client for tests that must send what real clients never
 * would. Reads are exact and time-limited, so a server that stops answering
 * fails the test instead of hanging it.
 */
export class RawClient {
  private buffered = Buffer.alloc(0);
  private waiter: (() => void) | undefined;
  private ended = false;
  readonly closed: Promise<void>;

  private readonly onData = (chunk: Buffer): void => {
    this.buffered = Buffer.concat([this.buffered, chunk]);
    this.waiter?.();
  };

  private constructor(public socket: net.Socket) {
    socket.on('data', this.onData);
    this.closed = new Promise((resolve) => socket.on('close', () => {
      this.ended = true;
      this.waiter?.();
      resolve();
    }));
    socket.on('error', () => undefined);
  }

  /**
   * After STARTTLS's ACK: runs a TLS handshake on this connection (Node's
   * OpenSSL client, not GnuTLS: the tests see a second implementation).
   * Rejects with the handshake's error.
   */
  async startTls(options: tls.ConnectionOptions): Promise<void> {
    if (this.buffered.length > 0) throw new Error(`${this.buffered.length} unread bytes before the TLS handshake`);
    this.socket.off('data', this.onData);
    const secure = tls.connect({ ...options, socket: this.socket });
    secure.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', () => resolve());
      secure.once('error', reject);
      secure.once('close', () => reject(new Error('closed during the TLS handshake')));
    });
    secure.on('data', this.onData);
    this.socket = secure;
  }

  /** A TCP port on 127.0.0.1, or a unix socket path. */
  static connect(where: number | string, localAddress?: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      // Any 127.x.y.z is this machine: a test can be many client addresses at once.
      const options = typeof where === 'number' ? { host: '127.0.0.1', port: where, localAddress } : { path: where };
      const socket = net.connect(options, () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  async read(count: number, timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered.length < count) {
      if (this.ended) throw new Error(`connection closed after ${this.buffered.length} of ${count} bytes`);
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new Error(`timed out waiting for ${count} bytes`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, remaining);
        this.waiter = () => { clearTimeout(timer); resolve(); };
      });
      this.waiter = undefined;
    }
    const out = this.buffered.subarray(0, count);
    this.buffered = this.buffered.subarray(count);
    return out;
  }

  write(data: Buffer): Promise<void> {
    return new Promise((resolve) => this.socket.write(data, () => resolve()));
  }

  /** True when the server closes the connection within the time limit. */
  async closedWithin(timeoutMs: number): Promise<boolean> {
    return Promise.race([this.closed.then(() => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), timeoutMs))]);
  }

  destroy(): void {
    this.socket.destroy();
  }

  async greet(clientFlags = 3): Promise<void> {
    const greeting = await this.read(18);
    if (greeting.toString('latin1', 0, 8) !== 'NBDMAGIC') throw new Error('bad greeting');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(clientFlags);
    await this.write(flags);
  }

  async sendOption(option: number, payload: Buffer, declaredLength = payload.length): Promise<void> {
    const header = Buffer.alloc(16);
    header.write('IHAVEOPT', 0, 'latin1');
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(declaredLength, 12);
    await this.write(Buffer.concat([header, payload]));
  }

  async readOptionReply(): Promise<{ option: number; type: number; payload: Buffer }> {
    const header = await this.read(20);
    const length = header.readUInt32BE(16);
    return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), payload: await this.read(length) };
  }

  /** NBD_OPT_GO with no info requests (as nbd-client does); returns size and flags. */
  async go(name = ''): Promise<{ sizeBytes: number; flags: number }> {
    const nameBytes = Buffer.from(name);
    const payload = Buffer.alloc(6 + nameBytes.length);
    payload.writeUInt32BE(nameBytes.length, 0);
    nameBytes.copy(payload, 4);
    await this.sendOption(7, payload);
    let sizeBytes = -1;
    let flags = 0;
    for (;;) {
      const reply = await this.readOptionReply();
      if (reply.type === 1) break;
      if (reply.type !== 3) throw new Error(`NBD_OPT_GO failed: reply type 0x${reply.type.toString(16)}`);
      if (reply.payload.readUInt16BE(0) === 0) {
        sizeBytes = Number(reply.payload.readBigUInt64BE(2));
        flags = reply.payload.readUInt16BE(10);
      }
    }
    return { sizeBytes, flags };
  }

  async request(type: number, options: { flags?: number; cookie?: bigint; offset?: bigint; length?: number; payload?: Buffer } = {}):
    Promise<void> {
    const header = requestHeader(type, options.cookie ?? 1n, options.offset ?? 0n,
      options.length ?? options.payload?.length ?? 0, options.flags);
    await this.write(options.payload ? Buffer.concat([header, options.payload]) : header);
  }

  async readSimpleReply(): Promise<{ error: number; cookie: bigint }> {
    const reply = await this.read(16);
    if (reply.readUInt32BE(0) !== 0x67446698) throw new Error(`bad reply magic 0x${reply.readUInt32BE(0).toString(16)}`);
    return { error: reply.readUInt32BE(4), cookie: reply.readBigUInt64BE(8) };
  }
}

export const READ = 0;
export const WRITE = 1;

/** A transmission-phase request header (compact form), as a client sends it; a bigint offset may be any 64-bit value. */
export function requestHeader(type: number, cookie: bigint, offsetBytes: number | bigint, lengthBytes: number, flags = 0): Buffer {
  const header = Buffer.alloc(28);
  header.writeUInt32BE(0x25609513, 0);
  header.writeUInt16BE(flags, 4);
  header.writeUInt16BE(type, 6);
  header.writeBigUInt64BE(cookie, 8);
  header.writeBigUInt64BE(BigInt(offsetBytes), 16);
  header.writeUInt32BE(lengthBytes, 24);
  return header;
}

/** A raw client past the handshake (NBD_OPT_GO, simple replies). */
export async function attachClient(address: number | string): Promise<RawClient> {
  const client = await RawClient.connect(address);
  await client.greet();
  await client.go();
  return client;
}

/** A raw client past STARTTLS (Node's TLS client) and NBD_OPT_GO inside TLS. */
export async function attachTlsClient(address: number | string, options: tls.ConnectionOptions): Promise<RawClient> {
  const client = await RawClient.connect(address);
  await client.greet();
  await client.sendOption(5, Buffer.alloc(0));
  const reply = await client.readOptionReply();
  if (reply.type !== 1) throw new Error(`NBD_OPT_STARTTLS answered 0x${reply.type.toString(16)}`);
  await client.startTls(options);
  await client.go();
  return client;
}
