import assert from 'node:assert/strict';
import net from 'node:net';
import type { Logger } from 'pino';
import { type Admitted, type AdmissionOptions, AdmissionPolicy, type AllowList, type DropReason, type RefusalReason } from './admission.js';
import { Connection, type ConnectionOptions } from './connection.js';
import type { ExportTable } from './negotiation.js';
import { addFileReplyStats, emptyFileReplyStats, type FileReplyStats } from './reply-writer.js';
import { claimUnixSocketPath, removeOwnSocket } from './unix-socket-path.js';

export interface ServerOptions {
  /** TCP listen address; undefined to skip TCP. Port 0 picks a free port. */
  tcp: { host: string; port: number } | undefined;
  /** Unix socket path; undefined to skip. */
  unixPath: string | undefined;
  maxConnections: number;
  /** Connections still negotiating at once; the oldest is dropped for a newcomer past it (see admission.ts). */
  negotiatingMax?: number;
  /** TCP connections from one address at once. */
  perAddressMax?: number;
  /** TCP clients must come from these addresses or networks; undefined: any. */
  allow?: AllowList;
  connection: Omit<ConnectionOptions, 'logger'>;
  logger: Logger;
}

export interface ListenAddresses {
  tcp: { host: string; port: number } | undefined;
  unixPath: string | undefined;
}

/**
 * Accepts clients on TCP and/or a unix socket. Each connection is isolated:
 * a misbehaving client can only close its own connection.
 */
/** limits.maxConnections: enforced here (a connection past it is refused). */
export const maxConnectionsBounds = { min: 1, max: 65536, default: 64 };

export class NbdServer {
  private readonly listeners: net.Server[] = [];
  /** The unix socket this server created, to remove at shutdown. */
  private boundUnixPath: string | undefined;
  /** In accept order: admission drops the oldest negotiating one first. */
  private readonly clients = new Set<Client>();
  /** Replaced whole by reconfigure(); a connection keeps the options it was accepted with. */
  private admission: AdmissionPolicy<Client>;
  private connectionOptions: Omit<ConnectionOptions, 'logger'>;
  private shuttingDown = false;
  private nextConnectionId = 1;
  private directBytesOfClosed = 0;
  private readonly fileRepliesOfClosed = emptyFileReplyStats();

  /** Clients that connected after the listeners were bound and before the export was ready. */
  private readonly waiting: net.Socket[] = [];
  private exports: ExportTable | undefined;
  /** Called once per client that finished connecting, and once when it is gone (events, metrics). */
  onClient: ((change: 'attached' | 'detached', client: { id: number; remote: string }) => void) | undefined;
  /** Called once per refused or dropped client, after it was logged (events, and through them the refusal counter). */
  onRefusal: ((reason: RefusalReason, remote: string) => void) | undefined;

  /**
   * Without `exports` the listeners can be bound (so a port in use or an
   * unresolvable host is found before any storage is created or written) and
   * clients wait, paused, until serve() names the export.
   */
  constructor(exports: ExportTable | undefined, private readonly options: ServerOptions) {
    assert(options.maxConnections > 0);
    this.exports = exports;
    this.admission = new AdmissionPolicy(admissionOptions(options));
    this.connectionOptions = options.connection;
  }

  /**
   * New clients are admitted and served with these from now on (SIGHUP: a
   * renewed certificate, a changed allow list). Connections already open
   * keep the TLS session and settings they started with, and a tightened
   * allow list does not end them: nothing in flight changes under them.
   */
  reconfigure(change: Pick<ServerOptions, 'maxConnections' | 'negotiatingMax' | 'perAddressMax' | 'allow'> &
    { tls: ConnectionOptions['tls'] }): void {
    assert(change.maxConnections > 0);
    this.admission = new AdmissionPolicy(admissionOptions(change));
    this.connectionOptions = { ...this.connectionOptions, tls: change.tls };
  }


  /** Starts serving the export; clients that connected meanwhile are taken in order. */
  serve(exports: ExportTable): void {
    assert(this.exports === undefined);
    this.exports = exports;
    for (const socket of this.waiting.splice(0)) this.accept(socket);
  }

  get connectionCount(): number {
    return this.clients.size;
  }

  get requestsInFlight(): number {
    let total = 0;
    for (const { connection } of this.clients) total += connection.requestsInFlight;
    return total;
  }

  /** WRITE payload bytes the kernel copied straight into their buffers, over all connections so far. */
  get directBytesReceived(): number {
    let total = this.directBytesOfClosed;
    for (const { connection } of this.clients) total += connection.directBytesReceived;
    return total;
  }

  /** How read replies went out by sendfile, over all connections so far. */
  get fileReplyStats(): FileReplyStats {
    const total = emptyFileReplyStats();
    addFileReplyStats(total, this.fileRepliesOfClosed);
    for (const { connection } of this.clients) addFileReplyStats(total, connection.fileReplyStats);
    return total;
  }

  async listen(): Promise<ListenAddresses> {
    return { tcp: await this.listenTcp(), unixPath: await this.listenUnix() };
  }

  async listenTcp(): Promise<ListenAddresses['tcp']> {
    if (this.options.tcp === undefined) return undefined;
    const server = this.createListener();
    await listenOn(server, { host: this.options.tcp.host, port: this.options.tcp.port });
    this.logListenerErrors(server);
    const bound = server.address() as net.AddressInfo;
    return { host: bound.address, port: bound.port };
  }

  async listenUnix(): Promise<string | undefined> {
    if (this.options.unixPath === undefined) return undefined;
    await claimUnixSocketPath(this.options.unixPath, 'unix socket');
    const server = this.createListener();
    await listenOn(server, { path: this.options.unixPath });
    this.logListenerErrors(server);
    return (this.boundUnixPath = this.options.unixPath);
  }

  /** Stops accepting, lets in-flight requests finish, closes every connection. */
  async shutdown(): Promise<void> {
    this.shuttingDown = true;
    // close() stops accepting at once but only calls back once every connection is gone,
    // so it is awaited after the connections are shut down.
    const listenersClosed = this.listeners.map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    for (const socket of this.waiting.splice(0)) socket.destroy();
    await Promise.all([...this.clients].map(({ connection }) => connection.shutdown()));
    await Promise.all(listenersClosed);
    // Only a socket this server bound: a path it was refused belongs to another server.
    if (this.boundUnixPath !== undefined) removeOwnSocket(this.boundUnixPath);
  }

  /** Once bound, a listener's errors (EMFILE on accept, say) are logged; they do not end the server. */
  private logListenerErrors(server: net.Server): void {
    server.on('error', (error) => this.options.logger.error({ err: error.message }, 'listener error'));
  }

  private createListener(): net.Server {
    // Paused: the connection takes the socket over before any byte is read (see socket-reader.ts).
    const server = net.createServer({ noDelay: true, pauseOnConnect: true }, (socket) => {
      if (this.exports === undefined && !this.shuttingDown) this.waiting.push(socket);
      else this.accept(socket);
    });
    this.listeners.push(server);
    return server;
  }

  private accept(socket: net.Socket): void {
    const id = this.nextConnectionId++;
    // A unix socket has no remote address: those clients share the socket's permissions, not a per-address cap.
    const address = socket.remoteAddress;
    const remote = address === undefined ? 'unix' : `${address}:${socket.remotePort}`;
    const logger = this.options.logger.child({ connection: id, remote: address ?? 'unix' });
    if (this.shuttingDown) {
      socket.destroy();
      return;
    }
    const verdict = this.admission.decide(address, this.clients);
    if (!verdict.admit) {
      logger.warn({ reason: verdict.reason }, `connection refused: ${verdict.detail}`);
      this.onRefusal?.(verdict.reason, remote);
      socket.destroy();
      return;
    }
    if (verdict.drop !== undefined) {
      const dropped = verdict.drop;
      dropped.logger.warn({ reason: 'negotiating-dropped', for: remote }, `connection dropped: ${dropMessages[verdict.dropReason]}`);
      this.onRefusal?.('negotiating-dropped', dropped.remote);
      dropped.connection.drop();
    }
    const connection = new Connection(socket, this.exports!, { ...this.connectionOptions, logger },
      () => this.shuttingDown);
    const client = new Client(connection, address, remote, logger);
    this.clients.add(client);
    const event = { id, remote };
    logger.debug('connected');
    this.onClient?.('attached', event);
    void connection.closed.then(() => {
      this.directBytesOfClosed += connection.directBytesReceived;
      addFileReplyStats(this.fileRepliesOfClosed, connection.fileReplyStats);
      this.clients.delete(client);
      logger.debug('disconnected');
      this.onClient?.('detached', event);
    });
  }
}

const dropMessages: Record<DropReason, string> = {
  'per-address': 'the oldest still negotiating from its address, to admit a newer client from it (limits.perAddressMax)',
  negotiating: 'the oldest still negotiating, to admit a newer client (limits.negotiatingMax)',
  total: 'the oldest still negotiating, to admit a newer client (limits.maxConnections)',
};

function admissionOptions(options: Pick<ServerOptions, 'maxConnections' | 'negotiatingMax' | 'perAddressMax' | 'allow'>): AdmissionOptions {
  return {
    maxConnections: options.maxConnections,
    negotiatingMax: options.negotiatingMax ?? options.maxConnections,
    perAddressMax: options.perAddressMax ?? options.maxConnections,
    allow: options.allow,
  };
}

class Client implements Admitted {
  constructor(readonly connection: Connection, readonly address: string | undefined, readonly remote: string,
    readonly logger: Logger) {}

  get negotiating(): boolean {
    return this.connection.negotiating;
  }
}

/**
 * The kernel's accept queue holds connections the event loop has not taken
 * yet; when it is full, a new client's SYN is dropped and retried a second
 * later. Node's default of 511 is what a flood of idle connections fills
 * first; the kernel caps this at net.core.somaxconn (4096 since Linux 5.4), as nbdkit asks with SOMAXCONN.
 */
const acceptBacklog = 4096;

function listenOn(server: net.Server, options: net.ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error): void => reject(error);
    server.once('error', onError);
    server.listen({ backlog: acceptBacklog, ...options }, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

