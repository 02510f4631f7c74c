import assert from 'node:assert/strict';
import type { Logger } from 'pino';
import { isBlockError, toBlockError } from '../blockdev/errors.js';
import { type BlockDevice, finishedNow } from '../blockdev/types.js';
import { Command, CommandFlag } from './constants.js';
import { nbdErrorFor } from './errno.js';
import { type BlockStatusContexts, ReadReplies, type ReadReplyOptions } from './read-replies.js';
import { simpleReply, structuredError } from './replies.js';
import type { ReplyWriter } from './reply-writer.js';
import type { RequestHeader } from './requests.js';

/** Chunk size when serving NBD_CMD_CACHE, which may name gigabytes. */
const cacheChunkBytes = 1 << 20;

/**
 * Runs validated requests against the export's device and sends their
 * replies, for one attached connection: every command, and the error reply
 * of one that failed (as a structured error when structured replies were
 * negotiated). Reading requests off the socket and their order are the
 * connection's; data-carrying replies are read-replies.ts.
 */
export class CommandRunner {
  private readonly reads: ReadReplies;

  constructor(private readonly device: BlockDevice, private readonly writer: ReplyWriter, private readonly structured: boolean,
    options: ReadReplyOptions, private readonly logger: Logger, statusContexts?: BlockStatusContexts) {
    this.reads = new ReadReplies(device, writer, structured, options, statusContexts);
  }

  /**
   * Serves a validated request and sends its reply. A read or write the
   * device finished in this turn is answered in this turn too (returns finishedNow).
   */
  execute(request: RequestHeader, offsetBytes: number, payload: Buffer | undefined): Promise<void> {
    if (request.type === Command.READ) return this.reads.serveRead(request, offsetBytes);
    if (request.type !== Command.WRITE) return this.executeOther(request, offsetBytes);
    let writing: Promise<void>;
    try {
      writing = this.device.write(offsetBytes, payload!, { fua: (request.flags & CommandFlag.FUA) !== 0 });
    } catch (error) {
      return Promise.reject(error);
    }
    if (writing !== finishedNow) return writing.then(() => this.replyOk(request));
    this.replyOk(request);
    return finishedNow;
  }

  private async executeOther(request: RequestHeader, offsetBytes: number): Promise<void> {
    const { device } = this;
    const fua = (request.flags & CommandFlag.FUA) !== 0;
    switch (request.type) {
      case Command.FLUSH:
        await device.flush();
        return this.replyOk(request);
      case Command.TRIM:
        await device.trim(offsetBytes, request.lengthBytes, { fua });
        return this.replyOk(request);
      case Command.WRITE_ZEROES:
        await device.writeZeroes(offsetBytes, request.lengthBytes, {
          fua,
          noHole: (request.flags & CommandFlag.NO_HOLE) !== 0,
          fast: (request.flags & CommandFlag.FAST_ZERO) !== 0,
        });
        return this.replyOk(request);
      case Command.CACHE: {
        // Reading through the stack fills whatever caches it has.
        const scratch = Buffer.allocUnsafe(Math.min(cacheChunkBytes, Math.max(request.lengthBytes, 1)));
        for (let done = 0; done < request.lengthBytes; done += scratch.length) {
          const chunk = Math.min(scratch.length, request.lengthBytes - done);
          await device.read(offsetBytes + done, scratch.subarray(0, chunk));
        }
        return this.replyOk(request);
      }
      case Command.BLOCK_STATUS: return this.reads.serveBlockStatus(request, offsetBytes);
    }
    assert.fail(`validated request has unknown type ${request.type}`);
  }

  private replyOk(request: RequestHeader): void {
    this.writer.send(simpleReply(0, request.cookie));
  }

  replyFailure(request: RequestHeader, error: unknown): void {
    const blockError = isBlockError(error) ? error : toBlockError(error, 'request failed');
    if (!isBlockError(error)) this.logger.error({ err: error }, 'unexpected non-BlockError from the device');
    this.logger.warn({ cookie: request.cookie.toString(), type: request.type, code: blockError.code,
      message: blockError.message }, 'request failed');
    this.replyError(request, nbdErrorFor(blockError.code), blockError.message);
  }

  replyError(request: RequestHeader, errorCode: number, message: string): void {
    assert(errorCode !== 0);
    // With structured replies, READ must never get a simple reply; errors carry their message.
    if (this.structured) this.writer.send(structuredError(request.cookie, errorCode, message));
    else this.writer.send(simpleReply(errorCode, request.cookie));
  }
}
