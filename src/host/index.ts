/**
 * The device host's entry points: run a host in this process
 * ({@link DeviceHost}), talk to a running one ({@link connectHost}), and where
 * they keep their files ({@link defaultPaths}). The vocabulary (parents,
 * types, instances) is in types.ts, the operations in api.ts.
 */
export { DeviceHost, DEFAULT_RELEASE_TIMEOUT_MS, type DeviceHostOptions } from './host.js';
export { AuditEvent, groupIdOf } from './groups.js';
export { DEFAULT_RESTART_POLICY, type RestartPolicy } from './host-instances.js';
export { connectHost, type ConnectHostOptions, type HostConnection } from './control-client.js';
export { ControlServer, DEFAULT_CONTROL_LIMITS, HOST_OPS, type ControlLimits, type ControlReply, type ControlRequest, type ControlServerOptions, type HostOp } from './control.js';
export { CONTROL_SOCKET_NAME, controlSocketPath, defaultPaths, ensureRunDir } from './paths.js';
export type * from './types.js';
export type * from './api.js';
