import type { Logger } from 'pino';
import { BufferPool } from '../blockdev/buffer-pool.js';
import type { Clock } from '../sys/clock.js';
import type { InputPoll } from './input-poll.js';
import type { RequestStats } from './request-stats.js';
import { defaultSocketReaderOptions, type SocketReaderOptions } from './socket-reader.js';
import type { TlsServer } from './tls-credentials.js';

export interface ConnectionOptions {
  /** A client that has not reached transmission by then is disconnected. */
  handshakeTimeoutMs: number;
  /** Requests being served at once; reading pauses above it (the kernel sends up to 128). */
  inFlightRequestsMax: number;
  /** Payload and reply bytes held at once; reading pauses above it. */
  inFlightBytesMax: number;
  /** Structured reads at least this long report holes as OFFSET_HOLE chunks. */
  sparseReadBytesMin: number;
  /** Large reply and payload buffers are reused from here. */
  bufferPool: BufferPool;
  /** How received bytes are placed (see socket-reader.ts). */
  reader: SocketReaderOptions;
  /** false: leave the accepted socket as Node made it (every byte through the parse queue). */
  directReads: boolean;
  /**
   * Reads at least this long of a device that lends file ranges are sent
   * with sendfile (see reply-writer.ts); smaller ones are copied. Off by
   * default (limits.sendfileReplyBytes): since large payloads are received
   * without copies, copied 1 MiB reads of a plain leg run at 1.3-1.8x the
   * sendfile path (3.0-3.4 vs 1.8-2.4 GB/s at QD8, warm and cold) and 256 KiB
   * reads at 1.5-2x, side by side on 2 vCPUs. Nor would sendfile from the
   * event loop itself pay for 64 KiB reads: in C over loopback TCP, a 64 KiB
   * reply cost its sender 25.7-27.9 µs of CPU by header plus sendfile against
   * 22.6-23.1 µs by pread plus send (40 000 random reads of a cached file).
   */
  fileReplyBytesMin: number;
  /**
   * A file reply the client leaves unread this long is finished through Node
   * instead of holding a thread. A reading client empties a loopback socket in
   * microseconds; one that leaves it full this long is slow.
   */
  fileReplyStallMs: number;
  /** Told of every input, so the event loop may poll a while instead of sleeping (see input-poll.ts). */
  inputPoll: InputPoll | undefined;
  /** Per-command counts and latencies for the metrics endpoint; undefined when metrics are off. */
  requestStats?: RequestStats;
  /** STARTTLS is offered (tls.mode on) or required (require); undefined: off. */
  tls?: TlsServer;
  /** Time for the handshake deadline and the closing grace (tests step it). */
  clock?: Clock;
  logger: Logger;
}

/** limits.handshakeTimeoutMs and limits.inFlightRequestsMax: enforced here. */
export const handshakeTimeoutBounds = { min: 100, max: 3_600_000, default: 120_000 };
export const inFlightRequestsBounds = { min: 1, max: 65536, default: 256 };

export const defaultConnectionOptions: Omit<ConnectionOptions, 'logger'> = {
  handshakeTimeoutMs: 120_000,
  inFlightRequestsMax: 256,
  inFlightBytesMax: 256 * 1024 * 1024,
  sparseReadBytesMin: 65536,
  bufferPool: new BufferPool(64 * 1024 * 1024),
  reader: defaultSocketReaderOptions,
  directReads: true,
  fileReplyBytesMin: Infinity,
  fileReplyStallMs: 5,
  inputPoll: undefined,
};
