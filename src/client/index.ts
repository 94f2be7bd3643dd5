/** The client library: connect to any vfio-user server and drive its device. */
export { VfioUserClient } from './client.js';
export { ClientCore } from './core.js';
export type { RegionInfoResult, RegionIoFdsResult, DmaMapOptions } from './client.js';
export type { ClientOptions, DmaResponder, TraceEvent, RequestOptions } from './core.js';
