/** A logger for tests that keeps the messages of its warnings (everything else is dropped). */
import type { Logger } from '../../src/log.js';

/** A logger that records warnings' messages in `warnings`. */
export function warningsLogger(): Logger & { warnings: string[] } {
  const warnings: string[] = [];
  const logger = {
    warnings,
    error() {},
    warn(_obj: object, msg?: string) {
      warnings.push(msg ?? '');
    },
    info() {},
    debug() {},
    child: () => logger,
  };
  return logger;
}
