/** Migration added by mediation (docs/mediated-migration.md). */
export { createMigrationPlugin } from './plugin.js';
export type { MigrationPlugin, MigrationSessionStats } from './plugin.js';
export { normalizeSpec, MAX_REGISTER_BLOCK } from './spec.js';
export type { MediatedMigrationSpec, MemoryArea, QuiesceSpec, RegisterRef, SavingArea, TrappedAccess } from './spec.js';
export type { SteeringStats } from './dma-steering.js';
