/**
 * A mediator plugin module that makes a device with no migration support
 * migratable (docs/mediated-migration.md): hand it to `vfio-user mediate`.
 *
 *   vfio-user mediate --upstream /tmp/dev.sock --listen /tmp/med.sock \
 *     --plugin dist/examples/mediated-migration.js -- \
 *     --device-type ticker --register 0:0x8:8 --register 0:0x14:4 \
 *     --quiesce 0:0x0:1 --idle 0:0x4:1:0 --saving 2:0x0:0x1000
 *
 * Arguments (after `--`):
 *   --spec FILE              a JSON MediatedMigrationSpec (bigints as numbers or strings); the flags below add to it
 *   --device-type NAME       the device model named in the stream (default `mediated`)
 *   --state-version N        the state layout version (default 1)
 *   --register R:OFF:SIZE    a register (block) of region R saved at STOP_COPY and restored in order (repeatable)
 *   --quiesce R:OFF:MASK     the control register whose MASK bits make the device run (cleared while stopped)
 *   --idle R:OFF:MASK:VALUE  polled until (value & MASK) === VALUE after the quiesce
 *   --memory none|mmappable  BAR memory carried in the stream (default mmappable)
 *   --saving R:OFF:SIZE      an area of region R that stays mappable while saving (repeatable; default none)
 *   --no-precopy             offer STOP_COPY only
 *   --log-trapped            log every access to a trapped area while saving (stderr)
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { createMigrationPlugin, type MediatedMigrationSpec, type MigrationPlugin, type RegisterRef, type SavingArea } from '../src/mediator/migration/index.js';
import { InvalidArgumentError } from '../src/errors.js';

/** `R:OFF:SIZE…` as numbers (decimal or 0x hex). */
function fields(text: string, count: number, what: string): number[] {
  const parts = text.split(':');
  const values = parts.map((p) => Number(p));
  if (parts.length !== count || values.some((v) => !Number.isSafeInteger(v) || v < 0)) {
    throw new InvalidArgumentError(`${what} '${text}': expected ${count} non-negative integers separated by ':'`);
  }
  return values;
}

/** A JSON spec file: bigints of memory and saving areas may be numbers or strings. */
function readSpec(path: string): MediatedMigrationSpec {
  const raw = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  const big = (v: unknown): bigint | undefined => (v === undefined ? undefined : BigInt(v as number | string));
  const saving: Record<number, SavingArea[]> = {};
  for (const [r, areas] of Object.entries((raw['savingMmap'] ?? {}) as Record<string, Array<{ offset: unknown; size: unknown }>>)) {
    saving[Number(r)] = areas.map((a) => ({ offset: big(a.offset) as bigint, size: big(a.size) as bigint }));
  }
  const memory = raw['memory'];
  return {
    ...(raw as unknown as MediatedMigrationSpec),
    savingMmap: saving,
    memory: Array.isArray(memory)
      ? memory.map((m: { region: number; offset?: unknown; size?: unknown }) => ({ region: m.region, ...(m.offset === undefined ? {} : { offset: big(m.offset) as bigint }), ...(m.size === undefined ? {} : { size: big(m.size) as bigint }) }))
      : (memory as 'mmappable' | undefined) ?? 'mmappable',
  };
}

/**
 * The plugin, from the command line's arguments after `--`.
 * @throws {InvalidArgumentError} EINVAL for an argument or spec that is wrong.
 */
export function createPlugin(args: readonly string[] = []): MigrationPlugin {
  const { values } = parseArgs({
    args: [...args],
    options: {
      spec: { type: 'string' },
      'device-type': { type: 'string' },
      'state-version': { type: 'string' },
      register: { type: 'string', multiple: true },
      quiesce: { type: 'string' },
      idle: { type: 'string' },
      memory: { type: 'string' },
      saving: { type: 'string', multiple: true },
      'no-precopy': { type: 'boolean' },
      'log-trapped': { type: 'boolean' },
    },
  });
  const spec: MediatedMigrationSpec = values.spec ? readSpec(values.spec) : { deviceType: 'mediated' };
  if (values['device-type']) spec.deviceType = values['device-type'];
  if (values['state-version']) spec.stateVersion = Number(values['state-version']);
  const registers: RegisterRef[] = [...(spec.registers ?? [])];
  for (const r of values.register ?? []) {
    const [region, offset, size] = fields(r, 3, '--register') as [number, number, number];
    registers.push({ region, offset, size });
  }
  spec.registers = registers;
  if (values.quiesce) {
    const [region, offset, runMask] = fields(values.quiesce, 3, '--quiesce') as [number, number, number];
    spec.quiesce = { control: { region, offset, size: 4 }, runMask };
    if (values.idle) {
      const [r, o, mask, value] = fields(values.idle, 4, '--idle') as [number, number, number, number];
      spec.quiesce.idle = { register: { region: r, offset: o, size: 4 }, mask, value };
    }
  } else if (values.idle) {
    throw new InvalidArgumentError('--idle needs --quiesce');
  }
  if (values.memory === 'none') spec.memory = [];
  else if (values.memory !== undefined && values.memory !== 'mmappable') throw new InvalidArgumentError(`--memory '${values.memory}': none or mmappable`);
  const saving: Record<number, SavingArea[]> = { ...(spec.savingMmap as Record<number, SavingArea[]> | undefined) };
  for (const s of values.saving ?? []) {
    const [region, offset, size] = fields(s, 3, '--saving') as [number, number, number];
    saving[region] = [...(saving[region] ?? []), { offset: BigInt(offset), size: BigInt(size) }];
  }
  spec.savingMmap = saving;
  if (values['no-precopy']) spec.preCopy = false;
  if (values['log-trapped']) {
    spec.onTrappedAccess = (a, session) => {
      process.stderr.write(`session ${session}: trapped ${a.write ? 'write' : 'read'} region ${a.region} 0x${a.offset.toString(16)}+${a.count}\n`);
    };
  }
  return createMigrationPlugin(spec);
}
