/**
 * The one logger. pino, JSON lines on stderr, with redaction on by default: anything that looks
 * like a credential is censored wherever it appears in the paths below, so a secret that reaches
 * a log call by mistake does not reach the log. Every line names the host and the process it came
 * from (`hostname`, `pid`), so lines of several services collected in one place can be told
 * apart. Everything else logs through `withIds`, so each line carries the correlation ids in
 * scope (event, change, job).
 */
import { hostname } from 'node:os';
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

/** Paths censored in every log line (pino redact syntax). */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-gerrit-token"]',
  'headers.authorization',
  '*.password',
  '*.token',
  '*.secret',
  '*.secrets',
  '*.privateKey',
  '*.passphrase',
  'env',
  '*.env',
];

/** `destination`: where the lines go (default stderr). */
export function createLogger(options: { level?: string; name?: string; destination?: DestinationStream } = {}): Logger {
  return pino(
    {
      name: options.name ?? 'airlock',
      level: options.level ?? process.env.AIRLOCK_LOG_LEVEL ?? 'info',
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      base: { hostname: hostname(), pid: process.pid },
    },
    options.destination ?? pino.destination(2),
  );
}

let root: Logger | undefined;

/** The process-wide logger, made on first use. */
export function rootLogger(): Logger {
  root ??= createLogger();
  return root;
}

/** A child logger that stamps the ids in scope on every line. */
export function withIds(logger: Logger, ids: { eventId?: string; change?: string; jobId?: string; project?: string }): Logger {
  return logger.child(ids);
}
