import assert from 'node:assert/strict';
import net from 'node:net';
import type { Logger } from 'pino';
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
export class NbdServer {
  private readonly listeners: net.Server[] = [];
  /** The unix socket this server created, to remove at shutdown. */
  private boundUnixPath: string | undefined;
  private readonly connections = new Set<Connection>();
  private shuttingDown = false;
  private nextConnectionId = 1;
  private directBytesOfClosed = 0;
  private readonly fileRepliesOfClosed = emptyFileReplyStats();

  constructor(private readonly exports: ExportTable, private readonly options: ServerOptions) {
    assert(options.maxConnections > 0);
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** WRITE payload bytes the kernel copied straight into their buffers, over all connections so far. */
  get directBytesReceived(): number {
    let total = this.directBytesOfClosed;
    for (const connection of this.connections) total += connection.directBytesReceived;
    return total;
  }

  /** How read replies went out by sendfile, over all connections so far. */
  get fileReplyStats(): FileReplyStats {
    const total = emptyFileReplyStats();
    addFileReplyStats(total, this.fileRepliesOfClosed);
    for (const connection of this.connections) addFileReplyStats(total, connection.fileReplyStats);
    return total;
  }

  async listen(): Promise<ListenAddresses> {
    const addresses: ListenAddresses = { tcp: undefined, unixPath: undefined };
    if (this.options.tcp !== undefined) {
      const server = this.createListener();
      await listenOn(server, { host: this.options.tcp.host, port: this.options.tcp.port });
      const bound = server.address() as net.AddressInfo;
      addresses.tcp = { host: bound.address, port: bound.port };
    }
    if (this.options.unixPath !== undefined) {
      await claimUnixSocketPath(this.options.unixPath, 'unix socket');
      const server = this.createListener();
      await listenOn(server, { path: this.options.unixPath });
      addresses.unixPath = this.boundUnixPath = this.options.unixPath;
    }
    return addresses;
  }

  /** Stops accepting, lets in-flight requests finish, closes every connection. */
  async shutdown(): Promise<void> {
    this.shuttingDown = true;
    // close() stops accepting at once but only calls back once every connection is gone,
    // so it is awaited after the connections are shut down.
    const listenersClosed = this.listeners.map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    await Promise.all([...this.connections].map((connection) => connection.shutdown()));
    await Promise.all(listenersClosed);
    // Only a socket this server bound: a path it was refused belongs to another server.
    if (this.boundUnixPath !== undefined) removeOwnSocket(this.boundUnixPath);
  }

  private createListener(): net.Server {
    // Paused: the connection takes the socket over before any byte is read (see socket-reader.ts).
    const server = net.createServer({ noDelay: true, pauseOnConnect: true }, (socket) => this.accept(socket));
    server.on('error', (error) => this.options.logger.error({ err: error }, 'listener error'));
    this.listeners.push(server);
    return server;
  }

  private accept(socket: net.Socket): void {
    const id = this.nextConnectionId++;
    const logger = this.options.logger.child({ connection: id, remote: socket.remoteAddress ?? 'unix' });
    if (this.shuttingDown) {
      socket.destroy();
      return;
    }
    if (this.connections.size >= this.options.maxConnections) {
      logger.warn({ limit: this.options.maxConnections }, 'connection refused: too many connections');
      socket.destroy();
      return;
    }
    const connection = new Connection(socket, this.exports, { ...this.options.connection, logger },
      () => this.shuttingDown);
    this.connections.add(connection);
    logger.debug('connected');
    void connection.closed.then(() => {
      this.directBytesOfClosed += connection.directBytesReceived;
      addFileReplyStats(this.fileRepliesOfClosed, connection.fileReplyStats);
      this.connections.delete(connection);
      logger.debug('disconnected');
    });
  }
}

function listenOn(server: net.Server, options: net.ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error): void => reject(error);
    server.once('error', onError);
    server.listen(options, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

