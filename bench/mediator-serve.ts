/**
 * A mediator with no plugin in its own process, for the mediator benchmark
 * while the CLI has no `vfio-user mediate` command:
 *   node mediator-serve.js UPSTREAM_SOCK LISTEN_SOCK
 * Prints `ready` once listening; SIGTERM closes it.
 */
import { Mediator } from '../src/mediator/mediator.js';

const [upstream, listen] = process.argv.slice(2);
if (!upstream || !listen) {
  process.stderr.write('usage: mediator-serve.js UPSTREAM_SOCK LISTEN_SOCK\n');
  process.exit(2);
}
const mediator = await Mediator.listen({ upstream, listen });
process.on('SIGTERM', () => void mediator.close().then(() => process.exit(0)));
process.stdout.write('ready\n');
