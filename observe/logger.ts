import { createRequire } from 'node:module';
import pino, { type Logger } from 'pino';

/** Levels by name ("warn"), as journald, jq filters and people read them, rather than pino's numbers. */
const formatters = { level: (label: string) => ({ level: label }) };

/** JSON lines for machines; pretty lines when a person watches a terminal. */
export function createLogger(level: string): Logger {
  if (process.stdout.isTTY && process.env.NBD_MIRROR_LOG_JSON !== '1') {
    const require = createRequire(import.meta.url);
    try {
      const pretty = require('pino-pretty') as (options: object) => NodeJS.WritableStream;
      return pino({ level, formatters }, pretty({ colorize: true, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname' }));
    } catch {
      // pino-pretty is optional at run time; fall through to JSON.
    }
  }
  return pino({ level, formatters });
}
