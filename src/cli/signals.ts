/** Waiting for the signals a long-running command (`serve`, `host`) stops on. */

/** Resolves with the name of the first SIGINT or SIGTERM, then stops listening for them (so a second one has its default effect). */
export function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    const on = (signal: string): void => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(signal);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}
