import { createRequire } from 'node:module';
import pino, { type Logger } from 'pino';

/** JSON lines for machines; pretty lines when a person watches a terminal. */
export function createLogger(level: string): Logger {
  if (process.stdout.isTTY && process.env.NBD_MIRROR_LOG_JSON !== '1') {
    const require = createRequire(import.meta.url);
    try {
      const pretty = require('pino-pretty') as (options: object) => NodeJS.WritableStream;
      return pino({ level }, pretty({ colorize: true, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname' }));
    } catch {
      // pino-pretty is optional at run time; fall through to JSON.
    }
  }
  return pino({ level });
}
