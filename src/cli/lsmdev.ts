#!/usr/bin/env node
/**
 * `lsmdev`: `vfio-user mdev list` under the name mdevctl gives it (mdevctl
 * ships `lsmdev` as `mdevctl list`), with the same options:
 * `lsmdev [-d] [-u UUID] [-p PARENT] [-v[v]] [--dumpjson | --json] [--control SOCKET]`.
 */
import { runLsmdev } from './commands/mdev.js';

await runLsmdev(process.argv);
